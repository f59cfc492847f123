"""The order probe: does a model's score depend on whether code A came before code B?

A held-out metric says how well a model ranks patients, not what it learned. On a synthetic cohort the
planted order effect is known (ehrseq.data.synthetic: A first recorded before B, within `order_window` visits,
adds `order_effect` to the log hazard; B first adds nothing), so the model's own answer can be checked against
it. For every held-out patient whose history (already cut at the prediction time) holds both A and B, two
counterfactual copies are scored: the visits of the two onsets (the first A and the first B) keep their
places, and the codes there are set to A then B ("A first") or B then A ("B first"). Every later record of A
and B, and everything else, stays as it was.

Both copies hold the same codes the same number of times at the same visits, so a model that only counts codes
scores them alike (up to how much it weighs recent visits), while the true log hazard differs by `order_effect`
where the onsets are within `order_window` visits (0 for the `presence` control). For the `transition` pattern
the swapped visits are the planted pair instead: a visit holding one of A and B alone, followed by the next visit
holding the other alone (A and B otherwise recur together); its true shift is `order_effect` for every patient
that has the pair. The shift is reported on the
model's score scale: log-odds for binary models, log relative hazard for survival ones; for rare outcomes the
two are close to the true log-HR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from ehrseq.data.patients import Patient
from ehrseq.data.supervised import LabelledSplit
from ehrseq.data.synthetic import PROGRESSION_A, PROGRESSION_B

Scorer = Callable[[LabelledSplit], np.ndarray]  # a split -> (S,) logits or log-risks, row-aligned


@dataclass(frozen=True)
class OrderProbe:
    mean_shift: float  # mean over patients of score(A first) - score(B first)
    share_positive: float  # share of patients whose shift is > 0
    true_log_hr: float  # the generator's answer: the planted order effect, averaged over the probed patients
    n: int  # patients probed (those holding both A and B)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def sentence(self) -> str:
        return (f"Order probe (the onsets of A and B swapped, {self.n} held-out patients holding both): mean score "
                f"shift {self.mean_shift:+.3f} (true log-HR {self.true_log_hr:+.3f}), positive for "
                f"{100 * self.share_positive:.0f}% of patients.")


def onsets(patient: Patient, code_a: str = PROGRESSION_A, code_b: str = PROGRESSION_B) -> tuple[int, int] | None:
    """Indices of the visits first holding A and first holding B, or None unless the history holds both."""
    first = {}
    for i, visit in enumerate(patient.visits):
        for code in (code_a, code_b):
            if code in visit.codes:
                first.setdefault(code, i)
    return (first[code_a], first[code_b]) if len(first) == 2 else None


def transition(patient: Patient, code_a: str = PROGRESSION_A, code_b: str = PROGRESSION_B) -> tuple[int, int] | None:
    """Indices of two consecutive visits, one holding A without B and the next B without A (or the mirror): the
    `transition` pattern's pair; None when there is none."""
    alone = [({code_a, code_b} & set(v.codes)) for v in patient.visits]
    return next(((i, i + 1) for i in range(len(alone) - 1)
                 if len(alone[i]) == len(alone[i + 1]) == 1 and alone[i] != alone[i + 1]), None)


def swapped_histories(patient: Patient, code_a: str = PROGRESSION_A, code_b: str = PROGRESSION_B,
                      pattern: str = "onset") -> tuple[Patient, Patient] | None:
    """The "A first" and "B first" copies of `patient`, or None unless it holds both A and B (for `transition`,
    the pair).

    A visit holding both onsets at once has no order to swap: such patients are left out too."""
    found = (transition if pattern == "transition" else onsets)(patient, code_a, code_b)
    if found is None or found[0] == found[1]:
        return None
    early, late = sorted(found)

    def with_onsets(first: str, second: str) -> Patient:
        visits = list(patient.visits)
        for i, code in ((early, first), (late, second)):
            kept = tuple(c for c in visits[i].codes if c not in (code_a, code_b))
            visits[i] = replace(visits[i], codes=(*kept, code))
        return replace(patient, visits=tuple(visits))

    return with_onsets(code_a, code_b), with_onsets(code_b, code_a)


def order_probe(split: LabelledSplit, score: Scorer, order_effect: float, order_window: int,
                pattern: str = "onset") -> OrderProbe:
    """Scores both copies of every patient holding A and B (same prediction times and labels as in `split`, so
    any model's scoring applies) and summarises the shifts against the true ones."""
    pairs = [swapped_histories(p, pattern=pattern) for p in split.patients]
    rows = [i for i, pair in enumerate(pairs) if pair is not None]
    if not rows:
        raise ValueError("the order probe needs held-out patients holding both A and B at different visits")
    a_first, b_first = (score(LabelledSplit([pairs[i][which] for i in rows], split.prediction_times[rows],
                                            split.labels[rows], split.times[rows], split.example_ids[rows]))
                          for which in (0, 1))
    shift = np.asarray(a_first, dtype=float) - np.asarray(b_first, dtype=float)
    if pattern == "transition":
        true_shift = np.full(len(rows), order_effect)
    else:
        gaps = np.array([abs(np.subtract(*onsets(split.patients[i]))) for i in rows])
        true_shift = order_effect * (gaps <= order_window)
    return OrderProbe(float(shift.mean()), float((shift > 0).mean()), float(true_shift.mean()), len(rows))


def logit(probabilities: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1 so a saturated model gives finite shifts."""
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)
