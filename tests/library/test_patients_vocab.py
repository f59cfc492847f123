"""Grouping MEDS events into visits, and the code vocabulary."""

from datetime import datetime
from pathlib import Path

import meds
import pyarrow as pa

from ehrseq.data.synthetic import generate_cohort
from ehrseq.data.vocab import Vocabulary

from support.reference_histories import Patient, Visit, build_vocabulary, patients_from_meds


def _table(rows: list[tuple[int, datetime | None, str]]) -> pa.Table:
    subject, time, code = zip(*rows, strict=True)
    return meds.DataSchema.align(
        pa.table({"subject_id": list(subject), "time": list(time), "code": list(code)})
    )


def test_visit_grouping_by_calendar_day():
    rows = [
        (2, datetime(2020, 1, 1, 9), "B"),
        (1, datetime(2010, 5, 6, 23, 0), "Y"),  # unsorted input on purpose
        (1, None, "SEX//F"),
        (1, datetime(1980, 2, 3), meds.birth_code),
        (1, datetime(2010, 5, 6, 8, 30), "X"),
        (1, datetime(2010, 5, 6, 12, 0), "X"),  # duplicate within the day
        (1, datetime(2010, 5, 7, 0, 30), "Z"),  # next day: a new visit
        (3, None, "SEX//M"),  # static only: no visits
    ]
    patients = patients_from_meds(_table(rows))
    assert [p.subject_id for p in patients] == [1, 2, 3]
    p1, p2, p3 = patients
    assert p1 == Patient(
        1,
        datetime(1980, 2, 3),
        (Visit(datetime(2010, 5, 6, 8, 30), ("X", "Y")), Visit(datetime(2010, 5, 7, 0, 30), ("Z",))),
        ("SEX//F",),
    )
    assert p2 == Patient(2, None, (Visit(datetime(2020, 1, 1, 9), ("B",)),))
    assert p3 == Patient(3, None, (), ("SEX//M",))


def test_synthetic_patients_keep_sex_as_a_static_code_not_a_visit_code():
    patients = patients_from_meds(generate_cohort(50, seed=1))
    assert len(patients) == 50
    for p in patients:
        assert p.birth is not None and len(p.visits) >= 2
        assert p.static in (("SEX//F",), ("SEX//M",))
        times = [v.time for v in p.visits]
        assert times == sorted(times) and len({t.date() for t in times}) == len(times)
        for v in p.visits:
            assert v.time > p.birth
            assert len(set(v.codes)) == len(v.codes)
            assert meds.birth_code not in v.codes and not any(c.startswith("SEX//") for c in v.codes)


def _patient(*visits: tuple[str, ...]) -> Patient:
    return Patient(0, None, tuple(Visit(datetime(2000, 1, i + 1), codes) for i, codes in enumerate(visits)))


def test_vocab_counts_order_and_min_count():
    patients = [_patient(("z", "b"), ("z", "d")), _patient(("b", "z"), ("c",))]
    vocab = build_vocabulary(patients)
    assert vocab.itos[: vocab.num_special] == list(Vocabulary.SPECIALS)
    assert (Vocabulary.PAD, Vocabulary.CLS, Vocabulary.SEP, Vocabulary.MASK, Vocabulary.UNK) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert vocab.num_special == 5
    assert vocab.itos[5:] == ["z", "b", "c", "d"]  # by count (3, 2, 1, 1), ties by code
    assert vocab.counts == {"z": 3, "b": 2, "c": 1, "d": 1}
    assert len(vocab) == 9
    assert vocab.encode("z") == 5 and vocab.decode(5) == "z"
    assert vocab.encode("never seen") == Vocabulary.UNK

    frequent = build_vocabulary(patients, min_count=2)
    assert frequent.itos[5:] == ["z", "b"]
    assert frequent.encode("c") == Vocabulary.UNK


def test_vocab_counts_static_codes_once_per_patient():
    patients = [Patient(i, None, _patient(("z",)).visits, static=("SEX//F",) if i < 3 else ("SEX//M",))
                for i in range(4)]
    vocab = build_vocabulary(patients, min_count=2)
    assert vocab.counts == {"z": 4, "SEX//F": 3}  # SEX//M (one patient) falls under min_count


def test_vocab_round_trip(tmp_path: Path):
    vocab = build_vocabulary(patients_from_meds(generate_cohort(30, seed=2)))
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.itos == vocab.itos and again.counts == vocab.counts
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").itos == vocab.itos
    assert build_vocabulary([_patient(("a",))]) != vocab
