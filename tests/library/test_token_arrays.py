"""TokenArrays.collate (the vectorised gather) against the original per-row loop, bit for bit, and the trainer
giving the same losses from TokenArrays and from the per-row path."""

from dataclasses import fields

import numpy as np
import pytest
import torch

from ehrseq.data.batching import Batch
from ehrseq.data.token_arrays import DTYPES, TokenArrays
from ehrseq.data.vocab import Vocabulary
from ehrseq.models import BEHRTConfig, BEHRTForMLM
from ehrseq.tasks.mlm import MLMTask
from ehrseq.training.trainer import Callback, TrainConfig, Trainer

from support.reference_batches import collate, collate_rows, row, token_arrays
from support.reference_histories import EncodedPatient

FEATURES = ("codes", "ages", "segments", "positions")


def random_patients(n: int, seed: int, max_len: int = 600, vocab: int = 30000,
                    max_position: int = 32767) -> list[EncodedPatient]:
    """Lengths 1..max_len, values over each dtype's useful range (codes never PAD inside a row)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, max_len + 1))
        out.append(EncodedPatient(int(rng.integers(0, 2**40)), rng.integers(1, vocab, k).tolist(),
                                  rng.integers(0, 1441, k).tolist(), rng.integers(0, 3, k).tolist(),
                                  rng.integers(0, max_position, k).tolist()))
    return out


def assert_identical(got: Batch, want: Batch) -> None:
    for f in fields(Batch):
        a, b = getattr(got, f.name), getattr(want, f.name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), f.name
        assert torch.equal(a, b), f.name


def memmapped(ta: TokenArrays, folder) -> TokenArrays:
    arrays = {}
    for name in (*FEATURES, "offsets", "subject_ids"):
        np.save(folder / f"{name}.npy", getattr(ta, name))
        arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
    assert isinstance(arrays["codes"], np.memmap)
    return TokenArrays(**arrays)


@pytest.fixture(scope="module")
def patients():
    return random_patients(300, seed=1)


@pytest.fixture(scope="module")
def arrays(patients):
    return token_arrays(patients)


def test_from_encoded_round_trips_with_its_dtypes(patients, arrays):
    assert len(arrays) == len(patients) and arrays.lengths.tolist() == [len(p.codes) for p in patients]
    assert {name: getattr(arrays, name).dtype for name in FEATURES} == {k: np.dtype(v) for k, v in DTYPES.items()}
    assert row(arrays, 7) == patients[7] and row(arrays, -1) == patients[-1]
    with pytest.raises(IndexError):
        row(arrays, len(patients))


@pytest.mark.parametrize("seed", range(6))
def test_collate_is_bit_identical_to_the_per_row_loop(patients, arrays, seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 160))
    indices = rng.integers(0, len(patients), size).tolist()  # any order, repeats likely
    indices += indices[: size // 4]  # certain repeats
    want = collate_rows([patients[i] for i in indices])
    assert_identical(arrays.collate(indices), want)
    assert_identical(arrays.collate(np.array(indices)), want)  # an index array too
    assert_identical(collate([patients[i] for i in indices]), want)  # the list path (same gather underneath)
    assert_identical(collate([row(arrays, i) for i in indices]), want)  # the old TokenArrays.collate


def test_collate_from_memmapped_arrays(patients, arrays, tmp_path):
    mm = memmapped(arrays, tmp_path)
    rng = np.random.default_rng(9)
    for _ in range(4):
        indices = rng.integers(0, len(patients), 64).tolist()
        assert_identical(mm.collate(indices), collate_rows([patients[i] for i in indices]))
    assert row(mm, 3) == patients[3]


def test_edge_cases():
    short = [EncodedPatient(5, [1], [0], [2], [0]), EncodedPatient(6, [1, 7], [3, 4], [0, 1], [0, 1])]
    ta = token_arrays(short)
    for indices in ([0], [1], [0, 0, 0], [1, 0], [-1, 0]):
        assert_identical(ta.collate(indices), collate_rows([short[i] for i in indices]))
    one = ta.collate([0])
    assert one.codes.shape == (1, 1) and one.num_tokens == 1
    with pytest.raises(ValueError, match="empty"):
        ta.collate([])
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(IndexError):
        ta.collate([0, 2])
    # an empty row (not produced by encode_patient, which always keeps [CLS] and [SEP]) pads to nothing
    empty = token_arrays([EncodedPatient(1, [], [], [], []), short[1]])
    assert_identical(empty.collate([0, 1, 0]), collate_rows([row(empty, 0), short[1], row(empty, 0)]))
    assert empty.collate([0]).codes.shape == (1, 0)
    assert len(token_arrays([])) == 0


def test_pad_id_and_a_pad_code_inside_a_row_match_the_loop():
    rows = [EncodedPatient(1, [3, 0, 4], [1, 2, 3], [0, 0, 1], [0, 1, 2]), EncodedPatient(2, [3], [9], [1], [4])]
    ta = token_arrays(rows)
    for pad_id in (0, 3, 7):
        assert_identical(ta.collate([0, 1], pad_id=pad_id), collate_rows(rows, pad_id=pad_id))
        assert_identical(collate(rows, pad_id=pad_id), collate_rows(rows, pad_id=pad_id))


def test_values_that_do_not_fit_raise_instead_of_wrapping():
    with pytest.raises(OverflowError):
        token_arrays([EncodedPatient(1, [1], [40000], [0], [0])])
    with pytest.raises(ValueError, match="length"):
        token_arrays([EncodedPatient(1, [1, 2], [0], [0, 0], [0, 0])])
    big = EncodedPatient(1, [1, 2], [40000, 2**40], [0, 0], [0, 0])  # the list path stays lossless (int64)
    assert_identical(collate([big]), collate_rows([big]))


def test_select_views_and_copies(patients, arrays, tmp_path):
    mm = memmapped(arrays, tmp_path)
    view = mm.select(slice(10, 50))
    assert isinstance(view.codes, np.memmap) and len(view) == 40  # no copy for a contiguous run
    assert [row(view, i) for i in range(40)] == patients[10:50]
    picked = [5, 3, 3, 299, 0]
    sub = mm.select(picked)
    assert [row(sub, i) for i in range(len(picked))] == [patients[i] for i in picked]
    assert_identical(sub.collate(range(len(picked))), collate_rows([patients[i] for i in picked]))
    every_100th = mm.select(slice(None, None, 100))
    assert len(mm.select(slice(5, 5))) == 0 and [row(every_100th, i) for i in range(3)] == patients[::100]


# -- the trainer: TokenArrays and the per-row path give the same losses -------------------------------------

class Losses(Callback):
    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_record(self, record: dict) -> None:
        self.records.append({k: v for k, v in record.items() if k not in ("time", "tokens_per_s", "seconds_per_step")})


class PerRow:
    """The trainer's old batching: EncodedPatient objects and the per-row loop."""

    def __init__(self, patients: list[EncodedPatient]) -> None:
        self.patients = patients
        self.lengths = np.array([len(p.codes) for p in patients])

    def collate(self, indices):
        return collate_rows([self.patients[i] for i in indices])


def train_records(train: list[EncodedPatient], tuning: list[EncodedPatient], per_row: bool = False,
                  steps: int = 5) -> list[dict]:
    vocab = Vocabulary({f"c{i}": 10 for i in range(35)})
    torch.manual_seed(0)
    model = BEHRTForMLM(BEHRTConfig(len(vocab), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    losses = Losses()
    trainer = Trainer(model, MLMTask(vocab), token_arrays(train), token_arrays(tuning), TrainConfig(
        max_steps=steps, batch_size=8, log_every=1, eval_every=2, eval_batch_size=5, precision="fp32"),
        torch.device("cpu"), callbacks=[losses])
    if per_row:
        trainer.train_set = PerRow(train)
    assert trainer.fit()
    return losses.records


def test_trainer_gives_identical_losses_from_token_arrays_and_the_per_row_path():
    train = random_patients(40, seed=3, max_len=30, vocab=40, max_position=256)
    tuning = random_patients(12, seed=4, max_len=30, vocab=40, max_position=256)
    from_arrays = train_records(train, tuning)
    assert len(from_arrays) == 5 + 3 and {r["split"] for r in from_arrays} == {"train", "tuning"}
    assert from_arrays == train_records(train, tuning, per_row=True)  # the pre-vectorised batches
