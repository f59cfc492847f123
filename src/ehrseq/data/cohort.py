"""From a data source to patients per split: the first step of every job."""

from __future__ import annotations

from pathlib import Path

import meds
import pyarrow.compute as pc

from ehrseq.data.labels import label_path, oracle_path
from ehrseq.data.meds_io import MedsDataset, read_meds_dataset, write_meds_dataset
from ehrseq.data.patients import Patient, patients_from_meds
from ehrseq.data.stream import SPLITS
from ehrseq.data.synthetic import PRESETS, SyntheticParams, assign_splits, generate_synthetic
from ehrseq.data.visits import DAY_VISITS, VisitRule
from ehrseq.errors import InputError


def load_dataset(source: str, path: str | None, num_patients: int, seed: int, cache_dir: Path,
                 synthetic: SyntheticParams = PRESETS["default"]) -> MedsDataset:
    """The MEDS dataset of `dataset_folder`, read whole (the object path; the token cache streams it instead)."""
    return read_meds_dataset(dataset_folder(source, path, num_patients, seed, cache_dir, synthetic))


def dataset_folder(source: str, path: str | None, num_patients: int, seed: int, cache_dir: Path,
                   synthetic: SyntheticParams = PRESETS["default"]) -> Path:
    """The folder of the MEDS dataset for the source. Synthetic cohorts (with the generator's `synthetic`
    parameters) and conversions of Synthea output (fhir, synthea-csv) are written once as real MEDS datasets
    under `cache_dir` and reused; `meds` is used in place."""
    if source == "synthetic":
        return synthetic_dataset(num_patients, seed, cache_dir, synthetic)
    if source in ("fhir", "synthea-csv"):
        from ehrseq.data.convert import convert, source_fingerprint  # converters load only when used

        if not path:
            raise InputError(f"data.path: required when data.source is {source!r} (the Synthea output folder)")
        if not Path(path).is_dir():
            raise InputError(f"data.path: {path!r} is not a folder")
        # Keyed by the source's files and the split seed: converted once, reused until the source changes.
        dest = cache_dir / f"{source}-{source_fingerprint(path)}-seed{seed}"
        if not (dest / "metadata" / "dataset.json").is_file():
            convert(source, Path(path), dest, seed=seed)
        return dest
    if source == "meds":
        if not path:
            raise InputError("data.path: required when data.source is 'meds' (the MEDS dataset folder)")
        if not Path(path).is_dir():
            raise InputError(f"data.path: {path!r} is not a folder")
        return Path(path)
    raise InputError(f"data.source: {source!r} is not supported; use synthetic, meds, fhir or synthea-csv")


def synthetic_dataset(num_patients: int, seed: int, cache_dir: Path,
                      params: SyntheticParams = PRESETS["default"]) -> Path:
    """The folder of the seeded synthetic cohort as a MEDS dataset with its labels and oracle risks
    (ehrseq.data.labels reads them), generated on first use.

    The folder name, which is also the dataset's name and so part of its identity and fingerprint, carries the
    preset's name (readability) and a hash of every generator parameter (so a changed effect size never reuses
    a cache nor compares as the same data)."""
    preset = next((name for name, p in PRESETS.items() if p == params), "custom")
    dest = Path(cache_dir) / f"synthetic-v3-{preset}-{params.key()}-n{num_patients}-seed{seed}"
    if not (dest / "metadata" / "dataset.json").is_file():
        write_synthetic_dataset(dest, num_patients, seed, params)
    return dest


def write_synthetic_dataset(dest: Path, num_patients: int, seed: int, params: SyntheticParams) -> None:
    """Writes the seeded cohort to `dest` as a MEDS dataset: data, patient splits, labels/<task>.parquet for the
    binary and survival tasks, and the oracle risks beside them."""
    cohort = generate_synthetic(num_patients, seed, params)
    extra = {label_path(task): table for task, table in cohort.labels.items()}
    extra |= {oracle_path(task): table for task, table in cohort.oracle.items()}
    splits = assign_splits(pc.unique(cohort.data.column("subject_id")).to_numpy(), seed)  # labelled or not
    write_meds_dataset(cohort.data, splits, dest, name=dest.name, extra=extra)


def patients_by_split(dataset: MedsDataset, visits: VisitRule = DAY_VISITS) -> dict[str, list[Patient]]:
    """Patients of each split (their events in `visits`), using the dataset's own patient-level splits."""
    out: dict[str, list[Patient]] = {s: [] for s in SPLITS}
    for patient in patients_from_meds(dataset.data, visits):
        split = dataset.splits.get(patient.subject_id)
        if split in out:
            out[split].append(patient)
    for split, patients in out.items():
        if not patients:
            raise InputError(empty_split_message(dataset, split))
    return out


def empty_split_message(dataset: MedsDataset, split: str) -> str:
    """Why a split has no patients, naming the splits file and the counts in it."""
    where = dataset.path / meds.subject_splits_filepath if dataset.path else "subject splits"
    listed = sum(s == split for s in dataset.splits.values())
    if not listed:
        counts = ", ".join(f"{s} {sum(v == s for v in dataset.splits.values()):,}" for s in SPLITS)
        return f"{where}: column 'split' lists no {split!r} subjects ({counts}); every split needs some"
    data = dataset.path / meds.data_subdirectory if dataset.path else "the data"
    return f"{where}: split {split!r} lists {listed:,} subjects, 0 of {listed:,} have events in {data}"
