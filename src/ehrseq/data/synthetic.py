"""Seeded synthetic EHR cohort in the MEDS data schema.

Real patient data cannot ship with the project, so tests, benchmarks and the `synthetic` data source use
this generator. Codes come from comorbidity clusters (diagnoses plus the drugs that treat them) that stay
with a patient for life, so earlier visits predict later ones and a masked-language model has something
to learn; a Zipf-shaped background of common codes and a few numeric labs add realistic noise.
Everything is vectorised with numpy so a few thousand patients take milliseconds.
"""

from collections.abc import Sequence

import meds
import numpy as np
import pyarrow as pa

NUM_CLUSTERS = 12
DX_PER_CLUSTER = 10
RX_PER_CLUSTER = 4
NUM_BACKGROUND = 150
# (code, mean, sd) of a few common labs, values in their usual units.
LABS = (
    ("LOINC//4548-4", 5.7, 1.0),  # HbA1c %
    ("LOINC//2345-7", 100.0, 25.0),  # glucose mg/dL
    ("LOINC//2160-0", 1.0, 0.3),  # creatinine mg/dL
    ("LOINC//718-7", 13.5, 1.6),  # hemoglobin g/dL
    ("LOINC//2093-3", 190.0, 35.0),  # cholesterol mg/dL
    ("LOINC//6690-2", 7.0, 2.0),  # WBC 10^3/uL
    ("LOINC//2823-3", 4.2, 0.4),  # potassium mmol/L
    ("LOINC//1742-6", 25.0, 10.0),  # ALT U/L
)
SEX_CODES = ("SEX//F", "SEX//M")

_DAY_US = 86_400 * 1_000_000
_EPOCH_DAY_2005 = int(np.datetime64("2005-01-01", "D").astype(np.int64))


def _catalog() -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Fixed (seed-independent) code lists, so every cohort shares one vocabulary.

    Returns all codes, the (cluster, item) -> code index table, the within-cluster item CDF and the
    background code indices ordered from most to least common.
    """
    codes: list[str] = []
    table = np.zeros((NUM_CLUSTERS, DX_PER_CLUSTER + RX_PER_CLUSTER), dtype=np.int64)
    for k, letter in enumerate("EIJKNMFGLCDH"[:NUM_CLUSTERS]):
        cluster = [f"ICD10//{letter}{11 + k}.{j}" for j in range(DX_PER_CLUSTER)]
        cluster += [f"RXNORM//{310000 + 100 * k + j}" for j in range(RX_PER_CLUSTER)]
        table[k] = np.arange(len(codes), len(codes) + len(cluster))
        codes += cluster
    # Within a cluster a few diagnoses dominate; 30% of cluster draws are its medications.
    dx_w = 1.0 / np.arange(1, DX_PER_CLUSTER + 1) ** 0.8
    rx_w = 1.0 / np.arange(1, RX_PER_CLUSTER + 1) ** 0.8
    item_w = np.concatenate([0.7 * dx_w / dx_w.sum(), 0.3 * rx_w / rx_w.sum()])
    item_cdf = np.cumsum(item_w)
    item_cdf[-1] = 1.0

    background = [f"ICD10//Z{i:02d}.0" for i in range(50)] + [f"ICD10//R{i:02d}.9" for i in range(50)]
    background += [f"CPT//{99200 + i}" for i in range(NUM_BACKGROUND - 100)]
    order = np.random.default_rng(0).permutation(NUM_BACKGROUND)  # mix code kinds across Zipf ranks
    background_idx = len(codes) + order
    codes += background
    codes += [code for code, _, _ in LABS] + [meds.birth_code, *SEX_CODES]
    return codes, table, item_cdf, background_idx


_CODES, _CLUSTER_TABLE, _ITEM_CDF, _BACKGROUND_IDX = _catalog()
_LAB0 = _CODES.index(LABS[0][0])
_BIRTH = _CODES.index(meds.birth_code)
_SEX0 = _CODES.index(SEX_CODES[0])
_CLUSTER_W = 1.0 / np.arange(1, NUM_CLUSTERS + 1) ** 0.5  # some conditions are more prevalent
_BACKGROUND_P = 1.0 / np.arange(1, NUM_BACKGROUND + 1) ** 1.1
_BACKGROUND_P /= _BACKGROUND_P.sum()
_LAB_MEAN, _LAB_SD = np.array([(mean, sd) for _, mean, sd in LABS]).T


def generate_cohort(num_patients: int, seed: int) -> pa.Table:
    """A MEDS data table of `num_patients` synthetic subjects, deterministic in (num_patients, seed)."""
    rng = np.random.default_rng(seed)
    n = num_patients
    subject_ids = 10_000 + np.cumsum(rng.integers(1, 20, n))
    sex = rng.integers(0, 2, n)
    child = rng.random(n) < 0.15
    age_years = np.where(child, rng.uniform(0, 18, n), np.clip(rng.normal(52, 17, n), 18, 90))
    num_visits = np.clip(2 + rng.lognormal(1.4, 0.9, n).astype(np.int64), 2, 40)
    num_active = 1 + rng.binomial(2, np.clip(age_years / 90, 0.05, 0.85))  # 1-3 clusters, more with age
    # Gumbel top-k: each patient's clusters, sampled without replacement by prevalence.
    cluster_rank = np.argsort(-(np.log(_CLUSTER_W) + rng.gumbel(size=(n, NUM_CLUSTERS))), axis=1)
    first_day = _EPOCH_DAY_2005 + rng.integers(0, 15 * 365, n)
    birth_day = first_day - np.round(age_years * 365.25).astype(np.int64)
    gap_scale = rng.uniform(20, 180, n)

    # Visits: one timestamp each, exponential gaps clipped to [1 day, 1 year].
    visit_patient = np.repeat(np.arange(n), num_visits)
    starts = np.cumsum(num_visits) - num_visits
    gaps = np.clip(np.ceil(rng.exponential(gap_scale[visit_patient])), 1, 365).astype(np.int64)
    gaps[starts] = 0
    day_offset = np.cumsum(gaps)
    day_offset -= np.repeat(day_offset[starts], num_visits)
    time_of_day_s = rng.integers(7 * 3600, 19 * 3600, len(visit_patient))
    visit_us = (first_day[visit_patient] + day_offset) * _DAY_US + time_of_day_s * 1_000_000

    # Events: 1-8 codes per visit, each from the patient's clusters, the background, or a lab.
    codes_per_visit = 1 + rng.binomial(7, 0.4, len(visit_patient))
    event_visit = np.repeat(np.arange(len(visit_patient)), codes_per_visit)
    event_patient = visit_patient[event_visit]
    m = len(event_visit)
    kind = rng.random(m)
    which = (rng.random(m) * num_active[event_patient]).astype(np.int64)
    cluster = cluster_rank[event_patient, which]
    item = np.searchsorted(_ITEM_CDF, rng.random(m), side="right")
    lab = rng.integers(0, len(LABS), m)
    code = np.where(
        kind < 0.7,
        _CLUSTER_TABLE[cluster, item],
        np.where(kind < 0.9, _BACKGROUND_IDX[rng.choice(NUM_BACKGROUND, m, p=_BACKGROUND_P)], _LAB0 + lab),
    )
    lab_value = np.round(_LAB_MEAN[lab] + _LAB_SD[lab] * rng.normal(size=m), 1)
    value = np.where(kind >= 0.9, lab_value, np.nan).astype(np.float32)

    # Static sex rows (null time), birth rows, then events; sort by subject then time, nulls first.
    subject = np.concatenate([subject_ids, subject_ids, subject_ids[event_patient]])
    time_us = np.concatenate([np.zeros(n, np.int64), birth_day * _DAY_US, visit_us[event_visit]])
    time_null = np.concatenate([np.ones(n, bool), np.zeros(n + m, bool)])
    code = np.concatenate([_SEX0 + sex, np.full(n, _BIRTH), code])
    value = np.concatenate([np.full(2 * n, np.nan, np.float32), value])
    order = np.lexsort((np.where(time_null, np.iinfo(np.int64).min, time_us), subject))
    table = pa.table(
        {
            "subject_id": pa.array(subject[order]),
            "time": pa.array(time_us[order], pa.timestamp("us"), mask=time_null[order]),
            "code": pa.DictionaryArray.from_arrays(
                pa.array(code[order]), pa.array(_CODES)
            ).dictionary_decode(),
            "numeric_value": pa.array(value[order], mask=np.isnan(value[order])),
        }
    )
    return meds.DataSchema.align(table)


def assign_splits(
    subject_ids: Sequence[int], seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> pa.Table:
    """Patient-level train/tuning/held_out assignment (MEDS SubjectSplitSchema), sorted by subject_id.

    Splitting by patient, not by event, keeps one patient's history out of two splits. With three or more
    subjects every split gets at least one, so evaluation never runs on an empty set.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = np.unique(np.asarray(subject_ids, dtype=np.int64))
    n = len(ids)
    n_tuning, n_held_out = (round(f * n) for f in fractions[1:])
    least = 1 if n >= 3 else 0
    n_held_out = min(max(n_held_out, least), n - 2 * least)
    n_tuning = min(max(n_tuning, least), n - least - n_held_out)
    names = np.array([meds.train_split, meds.tuning_split, meds.held_out_split])
    which = np.repeat([0, 1, 2], [n - n_tuning - n_held_out, n_tuning, n_held_out])
    split = names[which[np.random.default_rng(seed).permutation(n)]]
    return meds.SubjectSplitSchema.align(pa.table({"subject_id": ids, "split": split.tolist()}))
