"""data.visit: what a visit is (calendar day, hospital stay, fixed bucket), the same for every data path."""

from datetime import datetime, timedelta

import meds
import numpy as np
import pyarrow as pa
import pytest

from ehrseq.data import token_cache as tc
from ehrseq.data.meds_io import read_meds_dataset, write_meds_dataset
from ehrseq.data.visits import VisitRule, visit_index
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError
from ehrseq_runner.job.pretrained import Pretrained, check_visit

from support.reference_batches import rows
from support.reference_histories import build_vocabulary, encode_patient
from support.reference_splits import patients_by_split

H = 3_600 * 1_000_000
D = 24 * H
NAMES = ["HOSPITAL_ADMISSION//EW EMER.//ER", "HOSPITAL_DISCHARGE//HOME", "LAB//1//mg/dL", "DIAGNOSIS//ICD//10//I50",
         "ICU_ADMISSION//MICU", "ICU_DISCHARGE//MICU"]
ADM, DIS, LAB, DX, ICU_IN, ICU_OUT = range(6)
STAYS = VisitRule.parse("admission", ("HOSPITAL_ADMISSION", "ICU_ADMISSION"), ("HOSPITAL_DISCHARGE", "ICU_DISCHARGE"))


def test_stays_days_and_buckets_on_a_hand_built_timeline():
    rows = [  # (patient, time, code) sorted by patient then time
        (1, 8 * H, LAB),  # a lab in the emergency department, before the admission: a day visit
        (1, 14 * H, ADM), (1, 15 * H, LAB), (1, D + 3 * H, ICU_IN), (1, 2 * D, LAB), (1, 2 * D + H, ICU_OUT),
        (1, 3 * D, DX), (1, 3 * D, DIS),  # diagnoses stamped at discharge belong to the stay
        (1, 3 * D + 5 * H, LAB),  # after the discharge, the same day: a day visit of its own
        (1, 5 * D, DIS),  # a discharge without an open stay: ignored
        (1, 6 * D, LAB), (1, 7 * D, ADM), (1, 8 * D, LAB),  # a stay open at the last row runs to it
        (2, 0, LAB), (2, D, LAB),  # the next patient starts outside any stay
    ]
    patient, time, code = (np.array(c) for c in zip(*rows, strict=True))
    assert visit_index(patient, time, code, NAMES, STAYS).tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 6, 7]
    assert visit_index(patient, time, code, NAMES).tolist() == [0, 0, 0, 1, 2, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9]
    assert visit_index(patient, time, code, NAMES, VisitRule.parse("hours:6")).tolist() == [
        0, 1, 1, 2, 3, 3, 4, 4, 4, 5, 6, 7, 8, 9, 10]
    assert visit_index(patient, time, code, NAMES, VisitRule.parse("hours:24")).tolist() == \
        visit_index(patient, time, code, NAMES).tolist()


def reference(patient, time, code, rule):
    """visit_index written as the plain loop it vectorises: per patient, stays by depth, then day visits."""
    out, visit, previous = [], -1, None
    starts = {i for i, n in enumerate(NAMES) if n.startswith(rule.start)}
    ends = {i for i, n in enumerate(NAMES) if n.startswith(rule.end)}
    for p in dict.fromkeys(patient.tolist()):
        rows = np.flatnonzero(patient == p)
        stays, depth, opened = [], 0, None
        order = sorted(rows, key=lambda r: (time[r], code[r] not in starts))
        for r in order:
            if code[r] in starts:
                depth += 1
                opened = time[r] if depth == 1 else opened
            elif code[r] in ends and depth:
                depth -= 1
                if not depth:
                    stays.append((opened, time[r]))
        if depth:
            stays.append((opened, np.inf))
        for r in rows:
            stay = next((k for k, (a, b) in enumerate(stays) if a <= time[r] <= b), None)
            key = (p, "stay", stay) if stay is not None else (p, "day", time[r] // D)
            visit += key != previous
            previous = key
            out.append(visit)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_stays_match_a_plain_loop_on_random_timelines(seed):
    rng = np.random.default_rng(seed)
    n = 300
    patient = np.sort(rng.integers(0, 6, n))
    time = rng.integers(0, 12, n) * 7 * H  # coarse times: many rows share a moment
    code = rng.choice(len(NAMES), n, p=[0.12, 0.12, 0.5, 0.1, 0.08, 0.08])
    order = np.lexsort((time, patient))
    patient, time, code = patient[order], time[order], code[order]
    assert visit_index(patient, time, code, NAMES, STAYS).tolist() == reference(patient, time, code, STAYS)


def test_bad_definitions_say_what_is_allowed():
    for bad in ("week", "hours:0", "hours:8761", "hours:1.5", "hours:", "Day"):
        with pytest.raises(ValueError, match=r"use day, admission or hours:N"):
            VisitRule.parse(bad)
    with pytest.raises(ValueError, match="code patterns"):
        VisitRule.parse("admission", (), ("X",))
    assert VisitRule.parse("day").identity() is None and VisitRule.parse("hours:24").identity() is None
    assert VisitRule.parse("hours:8").identity() == {"kind": "hours", "hours": 8}


T0 = datetime(2012, 5, 1, 9)
HOSPITAL_ROWS = [
    (1, datetime(1950, 1, 1), meds.birth_code), (1, None, "SEX//F"),
    (1, T0 - timedelta(days=40), "LAB//1//mg/dL"),  # an outpatient lab: a day visit
    (1, T0, "ED_REGISTRATION"), (1, T0 + timedelta(hours=5), "HOSPITAL_ADMISSION//EW EMER.//ER"),
    *[(1, T0 + timedelta(days=d, hours=h), f"LAB//{k}//mg/dL") for d in range(6) for h in (6, 18) for k in range(4)],
    (1, T0 + timedelta(days=2), "ICU_ADMISSION//MICU"), (1, T0 + timedelta(days=4), "ICU_DISCHARGE//MICU"),
    (1, T0 + timedelta(days=6), "DIAGNOSIS//ICD//10//I50"), (1, T0 + timedelta(days=6), "HOSPITAL_DISCHARGE//HOME"),
    (1, T0 + timedelta(days=30), "HOSPITAL_ADMISSION//URGENT//ER"), (1, T0 + timedelta(days=31), "LAB//1//mg/dL"),
    (2, datetime(1960, 3, 1), meds.birth_code), (2, T0, "LAB//1//mg/dL"),
    (2, T0 + timedelta(hours=30), "LAB//2//mg/dL"),
    (3, T0, "HOSPITAL_DISCHARGE//HOME"), (3, T0 + timedelta(days=1), "LAB//3//mg/dL"),
]


@pytest.mark.parametrize("rule", ["admission", "hours:8", "day"])
@pytest.mark.parametrize("max_len", [6, 24, 200])
def test_the_token_cache_and_the_patient_objects_group_alike(tmp_path, rule, max_len):
    visits = VisitRule.parse(rule)
    ds = tmp_path / "ds"
    subject, time, code = zip(*HOSPITAL_ROWS, strict=True)
    write_meds_dataset(pa.table({"subject_id": subject, "time": pa.array(time, pa.timestamp("us")), "code": code}),
                       pa.table({"subject_id": [1, 2, 3], "split": ["train", "tuning", "held_out"]}), ds, "stays")
    tc.build_token_cache(ds, tmp_path / "cache", max_len, 1, visits=visits)
    patients = patients_by_split(read_meds_dataset(ds), visits)
    vocab = build_vocabulary(patients["train"], 1)
    got_vocab, got = tc.load_token_cache(tmp_path / "cache")
    assert got_vocab.itos == vocab.itos
    for split, ps in patients.items():
        assert rows(got[split]) == [encode_patient(p, vocab, max_len) for p in ps]
    first = patients["train"][0]
    if rule == "admission":  # outpatient lab, the ED day, the stay, the open second stay
        assert [len(v.codes) for v in first.visits] == [1, 1, 9, 2]
        assert first.visits[2].codes[0] == "HOSPITAL_ADMISSION//EW EMER.//ER"
    keys = {tc.cache_key(ds, 24, 1, visits=VisitRule.parse(r)) for r in ("day", "hours:24", "hours:8", "admission")}
    assert len(keys) == 3  # hours:24 is day


def test_a_fine_tune_reads_the_visits_its_pretraining_read():
    base = Pretrained("file:///runs/base", "0" * 64, Vocabulary({"A": 1}), {},
                      {"visit": "admission", "admission": {"start": ["HOSPITAL_ADMISSION"], "end": ["X"]}})
    check_visit(base, "admission", {"start": ["HOSPITAL_ADMISSION"], "end": ["X"]})
    for visit, admission in (("day", {}), ("admission", {"start": ["HOSPITAL_ADMISSION"], "end": ["Y"]})):
        with pytest.raises(InputError, match="pretrained with 'admission'"):
            check_visit(base, visit, admission)
    older = Pretrained("file:///runs/old", "0" * 64, Vocabulary({"A": 1}), {}, {"seed": 0})  # before data.visit
    check_visit(older, "day", {})
    with pytest.raises(InputError, match=r"data.visit: 'hours:6', but file:///runs/old was pretrained with 'day'"):
        check_visit(older, "hours:6", {})
