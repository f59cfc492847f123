"""Patient -> BEHRT token sequence: structure, ages, truncation."""

from datetime import datetime

import numpy as np
import pytest

from ehrseq.data.synthetic import generate_cohort
from ehrseq.data.tokenize import MAX_AGE_MONTHS, STATIC_SEGMENT
from ehrseq.data.vocab import Vocabulary

from support.reference_histories import Patient, Visit, build_vocabulary, encode_patient, patients_from_meds

CLS, SEP = Vocabulary.CLS, Vocabulary.SEP


@pytest.fixture(scope="module")
def cohort() -> tuple[list[Patient], Vocabulary]:
    patients = patients_from_meds(generate_cohort(200, seed=5))
    return patients, build_vocabulary(patients)


def _hand_patient() -> tuple[Patient, Vocabulary]:
    birth = datetime(2000, 3, 15)
    visits = (
        Visit(datetime(2000, 3, 20), ("a", "b")),  # 0 months
        Visit(datetime(2001, 3, 14), ("c",)),  # 11 months (one day short of a year)
        Visit(datetime(2010, 3, 15), ("d", "e", "f")),  # 120 months
    )
    patient = Patient(42, birth, visits)
    return patient, build_vocabulary([patient])


def test_hand_built_patient_full():
    patient, vocab = _hand_patient()
    enc = encode_patient(patient, vocab, max_len=100)
    a, b, c, d, e, f = (vocab.encode(x) for x in "abcdef")
    assert enc.subject_id == 42
    assert enc.codes == [CLS, a, b, SEP, c, SEP, d, e, f, SEP]
    assert enc.ages == [0, 0, 0, 0, 11, 11, 120, 120, 120, 120]
    assert enc.segments == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert enc.positions == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]


def test_truncation_keeps_latest_visits():
    patient, vocab = _hand_patient()
    c, d, e, f = (vocab.encode(x) for x in "cdef")
    enc = encode_patient(patient, vocab, max_len=8)  # the oldest visit (3 tokens) no longer fits
    assert enc.codes == [CLS, c, SEP, d, e, f, SEP]
    assert enc.ages == [11, 11, 11, 120, 120, 120, 120]  # CLS takes the first kept visit's age
    assert enc.positions == [0, 0, 0, 1, 1, 1, 1]  # renumbered among kept visits
    assert enc.segments == [0, 0, 0, 1, 1, 1, 1]
    assert encode_patient(patient, vocab, max_len=5).codes == [CLS, d, e, f, SEP]
    assert encode_patient(patient, vocab, max_len=4).codes == [CLS, d, e, SEP]  # latest visit cut
    assert encode_patient(patient, vocab, max_len=2).codes == [CLS, SEP]


def test_empty_patient_unknown_birth_and_unknown_codes():
    vocab = build_vocabulary([])
    empty = encode_patient(Patient(1, None, ()), vocab, max_len=10)
    assert (empty.codes, empty.ages, empty.segments, empty.positions) == ([CLS], [0], [0], [0])
    enc = encode_patient(Patient(2, None, (Visit(datetime(2020, 1, 1), ("zz",)),)), vocab, max_len=10)
    assert enc.codes == [CLS, Vocabulary.UNK, SEP] and enc.ages == [0, 0, 0]
    old = Patient(3, datetime(1800, 1, 1), (Visit(datetime(2020, 1, 1), ("x",)),))
    assert set(encode_patient(old, vocab, max_len=10).ages) == {MAX_AGE_MONTHS}
    with pytest.raises(ValueError, match="max_len"):
        encode_patient(old, vocab, max_len=1)


def test_invariants_on_synthetic_cohort(cohort):
    patients, vocab = cohort
    rng = np.random.default_rng(0)
    for patient in patients:
        for max_len in rng.integers(2, 120, size=5).tolist():
            enc = encode_patient(patient, vocab, max_len)
            n = len(enc.codes)
            assert n <= max_len
            assert len(enc.ages) == len(enc.segments) == len(enc.positions) == n
            assert enc.codes[0] == CLS and enc.codes[-1] == SEP
            num_kept = enc.codes.count(SEP)
            assert enc.positions[-1] == num_kept - 1
            assert all(0 <= x <= MAX_AGE_MONTHS for x in enc.ages)
            assert enc.ages == sorted(enc.ages)
            assert len(patient.static) == 1  # the sex code: kept whenever there is room beside [CLS] and a [SEP]
            static = [vocab.encode(code) for code in patient.static][: max_len - 2]
            assert enc.codes[1 : 1 + len(static)] == static
            assert enc.segments[1 : 1 + len(static)] == [STATIC_SEGMENT] * len(static)
            visits = slice(1 + len(static), None)
            assert all(s == p % 2 for s, p in zip(enc.segments[visits], enc.positions[visits], strict=True))
            seps = [i for i, code in enumerate(enc.codes) if code == SEP]
            for visit_index, (start, end) in enumerate(zip([len(static), *seps[:-1]], seps, strict=True)):
                assert set(enc.positions[start + 1 : end + 1]) == {visit_index}
            # The kept visits are the latest ones, whole except possibly a cut single latest visit.
            latest = patient.visits[-num_kept:]
            expected = [CLS, *static]
            for visit in latest:
                expected += [vocab.encode(code) for code in visit.codes] + [SEP]
            if num_kept == 1 and len(expected) > max_len:
                expected = expected[: max_len - 1] + [SEP]
            assert enc.codes == expected
            if num_kept < len(patient.visits):  # dropping was needed: the next older visit does not fit
                assert n + len(patient.visits[-num_kept - 1].codes) + 1 > max_len


def test_static_codes_follow_cls_in_their_segment_and_survive_truncation():
    patient, _ = _hand_patient()
    patient = Patient(patient.subject_id, patient.birth, patient.visits, static=("SEX//F", "zz-unseen"))
    vocab = build_vocabulary([Patient(0, None, patient.visits, static=("SEX//F",))])
    sex, d, e, f = (vocab.encode(x) for x in ("SEX//F", "d", "e", "f"))
    enc = encode_patient(patient, vocab, max_len=6)  # only the latest visit fits beside [CLS] and the sex code
    assert enc.codes == [CLS, sex, d, e, f, SEP]  # the code outside the vocabulary is left out, not [UNK]
    assert enc.segments == [0, STATIC_SEGMENT, 0, 0, 0, 0]
    assert enc.positions == [0, 0, 0, 0, 0, 0]
    assert enc.ages == [120] * 6  # [CLS] and static codes take the first kept visit's age
    assert encode_patient(patient, vocab, max_len=4).codes == [CLS, sex, d, SEP]
