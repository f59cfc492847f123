"""A patient's visits as BEHRT input: `[CLS] static codes v1 codes [SEP] v2 codes [SEP] ...` plus per-token features.

Each token carries the patient's age at that visit, a segment id alternating per visit (A/B, as BERT's
sentence ids) and the visit's index as its position, so the model sees visit structure and time. Static
codes (sex, ...: no time) come right after [CLS] in a segment of their own (STATIC_SEGMENT), at position 0
with [CLS]'s age; truncation drops old visits, never them.

Ages are in whole MONTHS, as in BEHRT: finer than years, which matters for children whose care changes
month by month, and clipped to MAX_AGE_MONTHS (120 years) so the age embedding table stays bounded.
"""

from dataclasses import dataclass
from datetime import datetime

from ehrseq.data.patients import Patient
from ehrseq.data.vocab import Vocabulary

MAX_AGE_MONTHS = 1440
STATIC_SEGMENT = 2  # visits alternate segments 0 and 1


@dataclass
class EncodedPatient:
    """Parallel token lists, all the same length, ready for batching."""

    subject_id: int
    codes: list[int]
    ages: list[int]
    segments: list[int]
    positions: list[int]


def _age_months(birth: datetime | None, when: datetime) -> int:
    """Completed months from `birth` to `when`, clipped to [0, MAX_AGE_MONTHS]; 0 when birth is unknown."""
    if birth is None:
        return 0
    months = (when.year - birth.year) * 12 + when.month - birth.month
    if (when.day, when.time()) < (birth.day, birth.time()):
        months -= 1
    return min(max(months, 0), MAX_AGE_MONTHS)


def encode_patient(patient: Patient, vocab: Vocabulary, max_len: int) -> EncodedPatient:
    """Encode the static codes and the most recent visits that fit in `max_len` tokens, dropping whole oldest
    visits first.

    Recent history matters most for prediction. If even the latest visit does not fit, its first codes that
    fit are kept (with room for its [SEP]). Static codes outside the vocabulary are left out ([UNK] would say
    nothing); at most `max_len - 2` are kept.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 ([CLS] plus one [SEP]), got {max_len}")
    static = [i for i in (vocab.encode(code) for code in patient.static) if i != Vocabulary.UNK][: max_len - 2]
    kept: list[tuple[datetime, tuple[str, ...]]] = []
    used = 1 + len(static)  # [CLS] and the static codes
    for visit in reversed(patient.visits):
        if used + len(visit.codes) + 1 > max_len:
            break
        kept.append((visit.time, visit.codes))
        used += len(visit.codes) + 1
    if not kept and patient.visits:
        latest = patient.visits[-1]
        kept.append((latest.time, latest.codes[: max_len - used - 1]))
    kept.reverse()

    first_age = _age_months(patient.birth, kept[0][0]) if kept else 0
    out = EncodedPatient(patient.subject_id, [Vocabulary.CLS, *static], [first_age] * (1 + len(static)),
                         [0] + [STATIC_SEGMENT] * len(static), [0] * (1 + len(static)))
    for i, (time, codes) in enumerate(kept):
        n = len(codes) + 1
        out.codes += [vocab.encode(code) for code in codes] + [Vocabulary.SEP]
        out.ages += [_age_months(patient.birth, time)] * n
        out.segments += [i % 2] * n
        out.positions += [i] * n
    return out
