"""A MEDS dataset tokenised once into flat, memory-mappable arrays, so a rerun loads it instead of re-encoding.

A cache folder (like nanoGPT's train.bin, one file per token feature):

    codes.npy int32, ages.npy int16, segments.npy int8, positions.npy int16   (N,) every patient's tokens
    offsets.npy int64 (P + 1), subject_ids.npy int64 (P), splits.npy int8 (P; 0 train, 1 tuning, 2 held_out)
    vocab.json      Vocabulary.to_json()
    manifest.json   written last: format, key, settings, counts, each split's range, each file's size + sha256

Patients are ordered by split, then subject_id, so a split is one contiguous range of every array. The key
hashes everything the tokens depend on (every data shard's and the splits file's bytes, max_len, min_count,
numeric_bins, a given vocabulary, data.codes, data.visit, FORMAT). The build streams shards
(ehrseq.data.stream): with numeric_bins, pass 0 fits the value bins on the training split
(ehrseq.data.numeric); pass 1 counts the vocabulary, pass 2 encodes each shard and appends it to per-split part
files, which are then copied in order into the .npy files. Everything is written in a hidden sibling folder
renamed into place at the end: a failure (a full disk included) leaves neither a cache nor the temporary folder;
a folder with no manifest, or whose files' sizes or checksums differ from it, is not a cache (NotATokenCache)
and is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrseq.data.codes import CodeFilter
from ehrseq.data.examples import ExampleLabels
from ehrseq.data.history_arrays import GROUPS, HistoryArrays, ragged_take
from ehrseq.data.labels import LabelReport
from ehrseq.data.meds_io import MedsDataset, sha256_of, swap_into_place
from ehrseq.data.numeric import NumericBins
from ehrseq.data.pretrain_cut import PretrainCut
from ehrseq.data.stream import (
    SPLITS,
    Histories,
    SplitTable,
    Tokens,
    count_codes,
    coverage,
    data_shards,
    encode,
    fit_bins,
    histories,
    iter_shards,
    last_visit_targets,
    passed_over,
    read_splits,
    training_vocabulary,
)
from ehrseq.data.supervised import LabelledSplit, NextVisitSplit, label_arrays, no_examples
from ehrseq.data.visits import DAY_VISITS, VisitRule
from ehrseq.data.vocab import Vocabulary
from ehrseq.errors import InputError, one_line, regular_file

if TYPE_CHECKING:
    from ehrseq.data.token_arrays import TokenArrays

FORMAT = 3  # 2: the manifest records coverage; 3: whole histories beside the tokens (ehrseq.data.history_arrays)
DTYPES = {"codes": np.int32, "ages": np.int16, "segments": np.int8, "positions": np.int16}  # token_arrays.DTYPES
# each ragged group: its offsets file (P + 1), its per-patient count in a shard's Tokens, its element files
RAGGED = {"offsets": ("lengths", DTYPES), "visit_offsets": ("num_visits", GROUPS["visit_offsets"]),
          "event_offsets": ("num_events", GROUPS["event_offsets"]),
          "static_offsets": ("num_static", GROUPS["static_offsets"]),
          "target_offsets": ("num_targets", {"target_codes": np.int32})}  # next_visit's target visit
ELEMENT_DTYPES = {name: dtype for _, arrays in RAGGED.values() for name, dtype in arrays.items()}
PATIENT_DTYPES = {"subject_ids": np.int64, "splits": np.int8, "births": np.int64, "target_times": np.int64,
                  **{offsets: np.int64 for offsets in RAGGED}}
CACHE_FILES = (*(f"{name}.npy" for name in (*ELEMENT_DTYPES, *PATIENT_DTYPES)), "vocab.json")  # manifest aside
LABELS_FILE = "labels.parquet"  # examples caches: the label rows, row = example id
LABEL_COLUMNS = ("subject_id", "prediction_time", "boolean_value", "float_value")
PASSED_OVER = ("subjects_without_split", "events_before_birth")  # manifest counts, reported with the data
_BLOCK = 1 << 24  # bytes per read or write while copying


def cache_files(name: str) -> tuple[str, ...]:
    """The fixed file names of the cache folder `name` (tokens-<key> or examples-<key>), manifest.json aside."""
    return (*CACHE_FILES, LABELS_FILE) if name.startswith("examples-") else CACHE_FILES


@dataclass
class LabelledTask:
    """Supervised examples to tokenise instead of whole patients: a binary or survival task's label rows as
    `read_task_labels` gives them (row i is example i) and the files they came from (part of the key)."""

    kind: str
    labels: pa.Table
    report: LabelReport  # rows read and duplicates dropped; the cache adds what the data showed
    files: list[Path]

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": [[f.name, f.stat().st_size, sha256_of(f)] for f in self.files]}


class NotATokenCache(Exception):
    """The folder holds no complete, intact token cache (no manifest, or a file differs from it): rebuild it."""


def dataset_fingerprint(dataset: Path) -> list[list[Any]]:
    """[relative path, size, sha256] of every data shard and of the splits file: the dataset's identity.

    The bytes themselves are hashed (about 1 GB/s, a small part of a build), not mtimes, so a copied dataset
    keeps its caches and a rewritten one never reuses a stale one."""
    dataset = Path(dataset)
    files = [*data_shards(dataset), regular_file(dataset / meds.subject_splits_filepath)]
    return [[f.relative_to(dataset).as_posix(), f.stat().st_size, sha256_of(f)] for f in files]


def cache_key(dataset: Path, max_len: int, min_count: int, vocab: Vocabulary | None = None,
              numeric_bins: int = 0, task: LabelledTask | None = None, cut: PretrainCut | None = None,
              codes: CodeFilter | None = None, next_visit: bool = False, visits: VisitRule = DAY_VISITS) -> str:
    """A short hash of the dataset's fingerprint, the settings and (when given) the vocabulary, task and cut."""
    given = None if vocab is None else hashlib.sha256(vocab.to_json().encode()).hexdigest()
    what = {"format": FORMAT, "dataset": dataset_fingerprint(dataset), "max_len": max_len, "min_count": min_count,
            "vocab": given}
    if numeric_bins and vocab is None:  # (a given vocabulary brings its own bins; 0 keeps older keys valid)
        what["numeric_bins"] = numeric_bins
        if task:  # the bins are fitted on values before the prediction times (older caches fitted on all)
            what["bins_fit"] = "before prediction times"
    if task:
        what["task"] = task.identity()
    if cut and cut.mode != "all":
        what["pretrain_data"] = cut.identity(dataset)
    if codes:
        what["codes"] = codes.identity()
    if next_visit:
        what["task"] = {"kind": "next_visit"}
    if visits.identity():  # (day visits add nothing: older keys stay valid)
        what["visit"] = visits.identity()
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


class _NpyWriter:
    """A 1-D .npy file of known length, written piece by piece and hashed on the way."""

    def __init__(self, path: Path, dtype: type, length: int) -> None:
        self.dtype, self.file, self.digest = np.dtype(dtype), open(path, "wb"), hashlib.sha256()  # noqa: SIM115
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (length,)})
        self.left = length * self.dtype.itemsize
        self.size = 0
        self._put(header.getvalue())

    def _put(self, data: bytes | memoryview) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def write(self, data: np.ndarray | bytes) -> None:
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data, self.dtype).data.cast("B")
        self.left -= len(data)
        self._put(data)

    def close(self) -> dict[str, Any]:
        self.file.close()
        if self.left:
            raise RuntimeError(f"{self.file.name}: {self.left} bytes short of its header's shape")
        return {"size": self.size, "sha256": self.digest.hexdigest()}


class _Parts:
    """Each split's encoded shards appended to raw part files, with each shard's subject range and sizes."""

    FIELDS = {**ELEMENT_DTYPES, **{count: np.int64 for count, _ in RAGGED.values()}, "subjects": np.int64,
              "births": np.int64, "target_times": np.int64}

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.folder = folder
        self.files: dict[tuple[int, str], BinaryIO] = {}
        for s in range(len(SPLITS)):
            for name in self.FIELDS:
                self.files[s, name] = open(self.path(s, name), "wb")  # noqa: SIM115
        # per split, each shard's first and last subject, patients, and elements of each ragged group
        self.chunks: list[list[tuple[int, int, int, dict[str, int]]]] = [[] for _ in SPLITS]

    def path(self, split: int, name: str) -> Path:
        return self.folder / f"{SPLITS[split]}.{name}"

    def append(self, tokens: Tokens) -> None:
        for s in range(len(SPLITS)):
            part = tokens.select(s)
            if len(part.subjects):
                for name in self.FIELDS:
                    self.files[s, name].write(np.ascontiguousarray(getattr(part, name)).data.cast("B"))
                self.chunks[s].append((int(part.subjects[0]), int(part.subjects[-1]), len(part.subjects),
                                       {offsets: int(getattr(part, count).sum()) for offsets, (count, _) in
                                        RAGGED.items()}))

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def patients(self) -> list[int]:
        return [sum(c[2] for c in chunks) for chunks in self.chunks]

    def elements(self, offsets: str = "offsets") -> list[int]:
        """Per split, the elements of a ragged group (default: tokens)."""
        return [sum(c[3][offsets] for c in chunks) for chunks in self.chunks]


def _blocks(src: Path, dtype: type, start: int, count: int) -> Iterator[np.ndarray]:
    """Elements start:start+count of a raw part file, in blocks (plain reads, not mmap, so RSS stays flat)."""
    size = np.dtype(dtype).itemsize
    with open(src, "rb") as f:
        f.seek(start * size)
        left = count * size
        while left:
            block = f.read(min(left, _BLOCK - _BLOCK % size))
            if not block:
                raise RuntimeError(f"{src}: ends early")
            left -= len(block)
            yield np.frombuffer(block, dtype)


class _Offsets:
    """An offsets .npy file (P + 1) written from per-patient counts, piece by piece."""

    def __init__(self, writer: _NpyWriter) -> None:
        self.writer, self.end = writer, 0
        writer.write(np.zeros(1, np.int64))

    def add(self, counts: np.ndarray) -> None:
        offsets = self.end + np.cumsum(counts, dtype=np.int64)
        self.writer.write(offsets)
        self.end = int(offsets[-1]) if len(offsets) else self.end


def _finish(parts: _Parts, tmp: Path) -> dict[str, dict[str, Any]]:
    """Write the .npy files from the part files: splits in order, patients by subject_id within a split."""
    parts.close()
    num_patients = sum(parts.patients())
    out = {name: _NpyWriter(tmp / f"{name}.npy", dtype, sum(parts.elements(offsets)))
           for offsets, (_, arrays) in RAGGED.items() for name, dtype in arrays.items()}
    out |= {name: _NpyWriter(tmp / f"{name}.npy", dtype, num_patients + (name in RAGGED))
            for name, dtype in PATIENT_DTYPES.items()}
    ends = {offsets: _Offsets(out[offsets]) for offsets in RAGGED}
    per_patient = {"subject_ids": "subjects", "births": "births", "target_times": "target_times"}
    for s, chunks in enumerate(parts.chunks):
        out["splits"].write(np.full(parts.patients()[s], s, np.int8))
        order = sorted(range(len(chunks)), key=lambda i: chunks[i][0])
        in_order = all(chunks[a][1] < chunks[b][0] for a, b in zip(order, order[1:], strict=False))
        if in_order:  # shards hold disjoint subject ranges (the usual case): copy them in range order
            patient_at = np.r_[0, np.cumsum([c[2] for c in chunks])]
            for offsets, (count, arrays) in RAGGED.items():
                element_at = np.r_[0, np.cumsum([c[3][offsets] for c in chunks])]
                for i in order:
                    for name, dtype in arrays.items():
                        for block in _blocks(parts.path(s, name), dtype, int(element_at[i]), chunks[i][3][offsets]):
                            out[name].write(block)
                    for block in _blocks(parts.path(s, count), np.int64, int(patient_at[i]), chunks[i][2]):
                        ends[offsets].add(block)
            for name, part in per_patient.items():
                for i in order:
                    for block in _blocks(parts.path(s, part), np.int64, int(patient_at[i]), chunks[i][2]):
                        out[name].write(block)
        else:  # interleaved subject ranges: gather patients by subject_id, a block at a time
            subjects = np.fromfile(parts.path(s, "subjects"), np.int64)
            perm = np.argsort(subjects, kind="stable")
            for offsets, (count, arrays) in RAGGED.items():
                counts = np.fromfile(parts.path(s, count), np.int64)
                starts = np.r_[0, np.cumsum(counts)]
                elements = {name: np.memmap(parts.path(s, name), dtype, "r") if starts[-1] else np.zeros(0, dtype)
                            for name, dtype in arrays.items()}
                for a in range(0, len(perm), 1 << 16):
                    p = perm[a: a + (1 << 16)]
                    src, _ = ragged_take(starts, p)
                    for name in arrays:
                        out[name].write(elements[name][src])
                    ends[offsets].add(counts[p])
                del elements
            out["subject_ids"].write(subjects[perm])
            for name in ("births", "target_times"):
                out[name].write(np.fromfile(parts.path(s, name), np.int64)[perm])
    return {f"{name}.npy": writer.close() for name, writer in out.items()}


def _check_splits(dataset: Path, splits: SplitTable, patients: list[int], task: LabelledTask | None = None,
                  examples: ExampleLabels | None = None, next_visit: bool = False) -> None:
    """An empty split is bad input: `cohort.empty_split_message` says why (`supervised.no_examples` for examples)."""
    for s, n in enumerate(patients):
        if not n and next_visit:
            raise InputError(f"task next_visit: the {SPLITS[s]!r} split has no subjects with two or more visits")
        if not n and task is not None:
            raise no_examples(SPLITS[s], examples.report(task.report))
        if not n:
            names = [SPLITS[i] if i >= 0 else "" for i in splits.split.tolist()]
            listed = MedsDataset(pa.table({}), dict(zip(splits.ids.tolist(), names, strict=True)), Path(dataset))
            from ehrseq.data.cohort import empty_split_message  # (brings pandas: only on this error)

            raise InputError(empty_split_message(listed, SPLITS[s]))


def _shard_histories(dataset: Path, splits: SplitTable, events: list[int], bins: NumericBins | None,
                     examples: ExampleLabels | None, codes: CodeFilter | None,
                     cut: PretrainCut | None, next_visit: bool = False,
                     visits: VisitRule = DAY_VISITS) -> Iterator[Histories]:
    """Each shard's histories in `visits` (the rows `codes` and `cut` keep; valued codes binned with `bins`; with
    `examples`, one per label row, cut at its prediction time before its visits are found), adding its rows to
    events[0], those `codes` drops to events[1], and what `passed_over` counts (subjects in no split, events
    before birth) to events[2:4]."""
    for shard in iter_shards(dataset, values=bins is not None):
        events[0] += len(shard.subject)  # the dataset's events (its identity), whatever is kept of them
        unplaced, before_birth = passed_over(shard, splits)
        events[2] += unplaced
        events[3] += before_birth
        if codes:
            kept = codes.apply(shard)
            events[1] += len(shard.subject) - len(kept.subject)
            shard = kept
        shard = cut.apply(shard) if cut else shard
        shard = shard.binned(bins) if bins else shard
        h = histories(*examples.cut(shard), visits) if examples else histories(shard, splits, visits)
        yield last_visit_targets(h) if next_visit else h


def _build(dataset: Path, tmp: Path, max_len: int, min_count: int, vocab: Vocabulary | None, source: str,
           key: str, numeric_bins: int, task: LabelledTask | None, cut: PretrainCut | None,
           codes: CodeFilter | None, next_visit: bool = False, visits: VisitRule = DAY_VISITS) -> dict[str, Any]:
    seconds, given, events = {}, vocab is not None, [0, 0, 0, 0]
    start = time.perf_counter()
    splits = read_splits(dataset)
    examples = ExampleLabels.of(task.labels, splits) if task else None
    bins = vocab.bins if vocab is not None else None
    if vocab is None and numeric_bins:  # pass 0, on values before the prediction times of labelled patients
        before = cut if cut or task is None else PretrainCut.of_rows("cut", examples.subject, examples.time)
        bins = fit_bins(dataset, splits, numeric_bins, *(s for s in (codes, before) if s))
        seconds["numeric_bins"] = time.perf_counter() - start
        start = time.perf_counter()
    each = _shard_histories(dataset, splits, events, bins, examples, codes, cut, next_visit, visits)
    if vocab is None:  # pass 1: the training split's code counts; each shard's histories kept for pass 2
        (tmp / "histories").mkdir()
        counts: Counter = Counter()
        patients = np.zeros(len(SPLITS), np.int64)
        saved = []
        for h in each:
            count_codes(h, counts)
            patients += np.bincount(h.split, minlength=len(SPLITS))
            saved.append(tmp / "histories" / f"{len(saved)}.npz")
            h.save(saved[-1])
        _check_splits(dataset, splits, patients.tolist(), task, examples, next_visit)
        vocab = training_vocabulary(counts, min_count, source, bins)
        each = (Histories.load(path) for path in saved)
        seconds["vocab"] = time.perf_counter() - start
    start = time.perf_counter()
    parts = _Parts(tmp / "parts")  # pass 2: encode each shard, append it to its splits' part files
    kept: list[list[np.ndarray]] = [[] for _ in SPLITS]  # per split, each shard's coverage counts
    try:
        for h in each:
            tokens = encode(h, vocab, max_len)
            parts.append(tokens)
            for s in range(len(SPLITS)):
                kept[s].append(tokens.kept[tokens.split == s])
    finally:
        parts.close()
    shutil.rmtree(tmp / "histories", ignore_errors=True)
    _check_splits(dataset, splits, parts.patients(), task, examples, next_visit)
    seconds["tokenise"] = time.perf_counter() - start
    start = time.perf_counter()
    files = _finish(parts, tmp)
    shutil.rmtree(parts.folder)
    (tmp / "vocab.json").write_text(vocab.to_json())
    files["vocab.json"] = {"size": (tmp / "vocab.json").stat().st_size, "sha256": sha256_of(tmp / "vocab.json")}
    if task:  # each example's label, by example id
        pq.write_table(task.labels.select([c for c in LABEL_COLUMNS if c in task.labels.column_names]),
                       tmp / LABELS_FILE)
        files[LABELS_FILE] = {"size": (tmp / LABELS_FILE).stat().st_size, "sha256": sha256_of(tmp / LABELS_FILE)}
    seconds["finish"] = time.perf_counter() - start
    patient_at = np.r_[0, np.cumsum(parts.patients())].tolist()
    token_at = np.r_[0, np.cumsum(parts.elements())].tolist()
    manifest = {
        "format": FORMAT, "key": key, "dataset": str(dataset),
        "settings": {"max_len": max_len, "min_count": min_count, "vocab_given": given,
                     "numeric_bins": vocab.numeric_bins, "visit": visits.describe()},
        "counts": {"events": events[0], "patients": patient_at[-1], "tokens": token_at[-1], "codes": len(vocab),
                   "subjects_without_split": events[2], "events_before_birth": events[3]},
        "splits": {name: {"patients": patient_at[s: s + 2], "tokens": token_at[s: s + 2]}
                   for s, name in enumerate(SPLITS)},
        "files": files, "seconds": seconds,
        "coverage": {name: coverage(np.concatenate(kept[s])) for s, name in enumerate(SPLITS)},
    }
    if task:
        manifest["examples"] = {"kind": task.kind, "report": examples.report(task.report).to_dict()}
    if cut:
        manifest["pretrain_data"] = cut.identity(dataset)
    if next_visit:
        manifest["next_visit"] = True
    if codes:
        manifest["codes"] = codes.describe(events[1], events[0])
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def passed_over_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """The manifest's counts of what tokenising passed over (`stream.passed_over`); a cache built before they
    were counted has none."""
    return {name: manifest["counts"][name] for name in PASSED_OVER if name in manifest["counts"]}


def describe_passed_over(counts: dict[str, int]) -> str | None:
    """A warning line for a run's log when anything was passed over; None when nothing was."""
    said = []
    if n := counts.get("subjects_without_split"):
        said.append(f"{n:,} subjects with data are in no split of metadata/subject_splits.parquet (or an unknown "
                    "one) and were left out")
    if n := counts.get("events_before_birth"):
        said.append(f"{n:,} events are dated before their subject's birth and were given age 0")
    return "; ".join(said) or None


def build_token_cache(dataset: Path, dest: Path, max_len: int, min_count: int = 1, vocab: Vocabulary | None = None,
                      source: str | None = None, key: str | None = None, numeric_bins: int = 0,
                      task: LabelledTask | None = None, cut: PretrainCut | None = None,
                      codes: CodeFilter | None = None, next_visit: bool = False,
                      visits: VisitRule = DAY_VISITS) -> dict[str, Any]:
    """Tokenise the MEDS dataset at `dataset` into a cache folder `dest` (replacing any old one); the manifest.

    Without `vocab`, the vocabulary is the training split's codes seen at least `min_count` times (InputError
    naming `source`, default the dataset path, if none is), numeric values binned into `numeric_bins` value
    bins per code when not 0 (fitted on the training split); a given `vocab` brings its own bins. With `task`,
    the patients are its examples (ehrseq.data.examples: one per label row, cut before its prediction time; the
    vocabulary counts the training examples' codes). With `cut` (pretraining), only the
    rows it keeps are read, for the bins, the vocabulary and the tokens (ehrseq.data.pretrain_cut); with `codes`
    (data.codes), only the codes it keeps; `visits` (data.visit) groups events into visits. With `next_visit`, the
    patients are next_visit's examples (each patient with two or more visits, cut before its last, that visit's
    codes the target: stream.last_visit_targets). `key` defaults to `cache_key(...)`."""
    dataset, dest = Path(dataset), Path(dest)
    key = key or cache_key(dataset, max_len, min_count, vocab, numeric_bins, task, cut, codes, next_visit, visits)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        manifest = _build(dataset, tmp, max_len, min_count, vocab, source or str(dataset), key, numeric_bins, task,
                          cut, codes, next_visit, visits)
        swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(folder: Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of an intact cache: every file present with its recorded size (and, with `verify`, sha256);
    NotATokenCache otherwise."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT:
            raise NotATokenCache(f"{folder}: cache format {manifest.get('format')}, expected {FORMAT}")
        if not all(isinstance(w, dict) and type(w.get("size")) is int for w in files.values()):
            raise TypeError("a file without an integer size")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise NotATokenCache(f"{folder}: no readable manifest.json ({e})") from e
    unlisted = [name for name in CACHE_FILES if name not in files]  # an unlisted file would go unchecked
    if unlisted:
        raise NotATokenCache(f"{folder}: manifest.json does not list {', '.join(unlisted)}")
    for name, want in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != want["size"]:
            raise NotATokenCache(f"{path}: missing or not {want['size']:,} bytes")
        if verify and sha256_of(path) != want.get("sha256"):
            raise NotATokenCache(f"{path}: checksum differs from the manifest's")
    return manifest


def load_token_cache(folder: Path, verify: bool = True) -> tuple[Vocabulary, dict[str, TokenArrays]]:
    """The vocabulary and each split's TokenArrays, memory-mapped (offsets made relative to the split)."""
    from ehrseq.data.token_arrays import TokenArrays  # (imports torch: only where the arrays are used)

    folder = Path(folder)
    manifest = read_manifest(folder, verify)
    vocab = Vocabulary.from_json((folder / "vocab.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in [*DTYPES, "offsets", "subject_ids"]}
    out = {}
    for name in SPLITS:
        (a, b), (ta, tb) = manifest["splits"][name]["patients"], manifest["splits"][name]["tokens"]
        out[name] = TokenArrays(*(arrays[f][ta:tb] for f in DTYPES), np.asarray(arrays["offsets"][a: b + 1]) - ta,
                                arrays["subject_ids"][a:b])
    return vocab, out


def load_histories(folder: Path, vocab: Vocabulary) -> dict[str, HistoryArrays]:
    """Each split's whole histories (row-aligned with `load_token_cache`'s patients), memory-mapped."""
    folder = Path(folder)
    manifest = read_manifest(folder, verify=False)
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r")
              for name in ["births", *GROUPS, *(n for group in GROUPS.values() for n in group)]}
    out = {}
    for name in SPLITS:
        a, b = manifest["splits"][name]["patients"]
        split = {"births": arrays["births"][a:b]}
        for offsets, elements in GROUPS.items():
            at = np.asarray(arrays[offsets][a: b + 1])
            split[offsets] = at - at[0]
            split |= {e: arrays[e][at[0]: at[-1]] for e in elements}
        out[name] = HistoryArrays(**split, names=vocab.itos)
    return out


def load_examples(folder: Path, arrays: dict[str, TokenArrays],
                  histories: dict[str, HistoryArrays] | None = None) -> tuple[dict[str, LabelledSplit], LabelReport]:
    """An examples cache's labels for each split of `load_token_cache(folder)` (whose subject_ids are example
    ids), with the whole histories of `load_histories(folder)` when given, and the label report it was built
    with."""
    labels = pq.read_table(Path(folder) / LABELS_FILE)
    times, flags, days = label_arrays(labels)
    subjects = labels.column("subject_id").to_numpy()
    out = {}
    for split, tokens in arrays.items():
        e = np.asarray(tokens.subject_ids, np.int64)
        out[split] = LabelledSplit(times[e], flags[e], days[e], e, subjects[e],
                                   histories[split] if histories else None)
    return out, LabelReport(**read_manifest(folder, verify=False)["examples"]["report"])


def load_next_visit(folder: Path, vocab: Vocabulary, arrays: dict[str, TokenArrays]) -> dict[str, NextVisitSplit]:
    """A next_visit cache's targets for each split of `load_token_cache(folder)`: each subject's last visit (its
    time, its codes by name; [UNK] for those outside the vocabulary)."""
    folder = Path(folder)
    manifest = read_manifest(folder, verify=False)
    times, offsets = np.load(folder / "target_times.npy"), np.load(folder / "target_offsets.npy")
    codes = np.load(folder / "target_codes.npy")
    out = {}
    for split, tokens in arrays.items():
        a, b = manifest["splits"][split]["patients"]
        out[split] = NextVisitSplit(times[a:b].astype("datetime64[us]"),
                                    [tuple(vocab.itos[c] for c in codes[offsets[p]: offsets[p + 1]])
                                     for p in range(a, b)], np.asarray(tokens.subject_ids, np.int64))
    return out


class CacheRemote(Protocol):
    """Somewhere else caches are kept (the runs' storage): a fresh machine downloads a cache from it instead of
    rebuilding, and a built one is published to it."""

    def fetch(self, name: str, dest: Path) -> bool: ...  # False if absent; NotATokenCache if damaged
    def publish(self, name: str, folder: Path) -> None: ...


def token_cache(dataset: Path, cache_dir: Path, max_len: int, min_count: int = 1, vocab: Vocabulary | None = None,
                source: str | None = None, warn: Callable[[str], None] | None = None,
                remote: CacheRemote | None = None, numeric_bins: int = 0,
                task: LabelledTask | None = None, cut: PretrainCut | None = None,
                codes: CodeFilter | None = None, next_visit: bool = False,
                visits: VisitRule = DAY_VISITS) -> tuple[Path, str]:
    """The cache folder for these inputs under `cache_dir` (`tokens-<key>`) and how it was had: "reused" (an
    intact one was there), "downloaded" (from `remote`) or "built" (then published to `remote`).

    A damaged local or remote one is rebuilt, after `warn(message)` when given; a remote that fails to publish
    only warns (the tokens are here, training goes on)."""
    say = warn or (lambda message: None)
    key = cache_key(dataset, max_len, min_count, vocab, numeric_bins, task, cut, codes, next_visit, visits)
    folder = Path(cache_dir) / f"{'examples' if task else 'tokens'}-{key}"
    if folder.exists():
        try:
            read_manifest(folder)
            return folder, "reused"
        except NotATokenCache as e:
            say(f"rebuilding the token cache: {e}")
    if remote is not None:
        try:
            if remote.fetch(folder.name, folder):
                return folder, "downloaded"
        except Exception as e:  # noqa: BLE001 - damaged (NotATokenCache) or unreachable: build it here instead
            say(f"the stored token cache {folder.name} could not be used ({one_line(e)}); building it here")
    build_token_cache(dataset, folder, max_len, min_count, vocab, source, key, numeric_bins, task, cut, codes,
                      next_visit, visits)
    if remote is not None:
        try:
            remote.publish(folder.name, folder)
        except Exception as e:  # noqa: BLE001 - storage trouble of any kind must not stop the run
            say(f"the token cache {folder.name} was not stored ({one_line(e)}); the next machine rebuilds it")
    return folder, "built"
