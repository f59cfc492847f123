"""Seeded synthetic EHR cohort in the MEDS data schema, with a planted outcome whose true risk is known.

Real patient data cannot ship with the project, so tests, benchmarks and the `synthetic` data source use
this generator. Codes come from comorbidity clusters (diagnoses plus the drugs that treat them) that stay
with a patient for life, so earlier visits predict later ones and a masked-language model has something
to learn; a Zipf-shaped background of common codes and a few numeric labs add realistic noise.

The known answer. Each patient has a prediction time (the end of the day of a visit part-way through the
history) and an outcome (OUTCOME_CODE) whose hazard after it is

    hazard/day = base_hazard * exp(age_effect * (age - 50) / 10 + cluster_effect * [cluster 0 present]
                                   + order_effect * [A's onset, then B's within order_window visits]
                                   + presence_effect * [A and B both present] + male_effect * male)

where A and B (PROGRESSION_A/B) are planted in one of two patterns:

- `onset`: first recorded (their onsets) at random visits in the leading `onset_span` of the history before
  the prediction time; with `recurrence` > 0 both are re-recorded alike at later visits once both are there.
  B first, or onsets far apart, add nothing to the order term. Per-code counts, recency and days since last
  barely see the order, but days since the *first* occurrence of each code does.
- `transition`: A and B recur together (both in the same visits: the first and last visit before the
  prediction time and each other visit w.p. `recurrence`), and, for half of the patients who have both, one
  visit in the second half of the history holds A without B and a visit 1-3 days later holds B without A
  (A -> B: the order term); the other half get the mirror (B -> A). Counts, recency, first and last
  occurrence and 30/365-day windows of A and B are then the same in both halves (up to 3 days): no per-code
  aggregate sees which code came first in the pair, only the sequence of visits does.

The effect sizes are a `SyntheticParams`; PRESETS name five: `default` (the original cohort: A and B once each,
weak order signal, strong age), `order` (onset order drives the outcome on >= 10% of patients, age is weak; its
order is visible to first-occurrence features), `presence` (its negative control: the same codes, prevalences
and histories, the outcome driven by A and B being present in any order), `transition` (the positive control
against full-strength count baselines: the A -> B pair drives the outcome) and `transition_presence` (its
negative twin: the same histories, the outcome driven by A and B being present).

The event comes at least a day after the prediction time; follow-up is censored uniformly in CENSOR_DAYS.
Labels: a binary task (event within the horizon; patients censored earlier without an event are left out,
their answer is unknown) and a survival task (days to event or censoring, event flag), in the MEDS label
layout, plus each labelled patient's true risk P(event within horizon) for oracle figures, and the same risk
recomputed without the order term (`true_risk_order_blind`), and the best an order-blind model can do
(`true_risk_order_marginal`: the true risk averaged over the order term given everything else, the order term's
share estimated within patients who have both codes and, for `onset`, the same number of onset visits).
Records continue after the prediction time, so inputs must be cut there (see ehrseq.data.examples).

Everything is vectorised with numpy and generated in chunks of patients, so 1M patients fit in memory.
"""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import meds
import numpy as np
import pyarrow as pa

from ehrseq.data.stream import rank_in_group
from ehrseq.data.synthetic_cohort import SyntheticCohort
from ehrseq.data.synthetic_icu import generate_icu

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
# The planted story (illustrative): CKD then heart failure soon after raises the risk of myocardial infarction.
PROGRESSION_A = "ICD10//N18.3"
PROGRESSION_B = "ICD10//I50.9"
OUTCOME_CODE = "ICD10//I21.9"


@dataclass(frozen=True)
class SyntheticParams:
    """The planted outcome's effect sizes (log hazard ratios) and how often A and B are planted."""

    prevalence_a: float = 0.25  # share of patients given A (at one random visit before the prediction time)
    prevalence_b: float = 0.25
    order_window: int = 3  # A then B counts when B is at most this many visits after A
    onset_span: float = 1.0  # A and B are first recorded within this leading share of the visits before prediction
    recurrence: float = 0.0  # once a patient's A and B are all recorded, each later visit re-records each w.p. this
    min_visits: int = 2  # fewest visits before the prediction time (long histories leave room for recurrences)
    order_effect: float = 1.6  # A followed by B within order_window visits
    presence_effect: float = 0.0  # A and B both present, in any order
    age_effect: float = 0.5  # per decade of age
    cluster_effect: float = 0.7  # comorbidity cluster 0
    male_effect: float = 0.2
    base_hazard: float = 0.08 / 365  # per day, at age 50 with no risk factor
    # onset (first recordings in order) | transition (A -> B in consecutive visits) | icu (another generator,
    # ehrseq.data.synthetic_icu: hospital stays, labs, a readmission task; the fields above do not apply)
    pattern: str = "onset"
    family_share: float = 0.0  # patients given 2-4 of the FAMILY codes (each individually rare) at random visits
    family_effect: float = 0.0  # log hazard ratio of having any of them
    labelled_share: float = 1.0  # patients with label rows; the others are an unlabelled pool (for pretraining)

    def key(self) -> str:
        """A short hash of every parameter: part of the cached dataset's name, so no change reuses a cache."""
        fields = asdict(self)
        for name, default in (("pattern", "onset"), ("family_share", 0.0), ("family_effect", 0.0),
                              ("labelled_share", 1.0)):
            if fields[name] == default:  # (these came later: cohorts without them keep their names)
                del fields[name]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


PRESETS = {
    "default": SyntheticParams(),
    # Positive control: which of A and B was recorded first (their onsets, in the first third of a history of at
    # least 12 visits) drives the outcome; afterwards both are re-recorded at half of the later visits. A and B are
    # common (80% each), so their presence says little, and as both recur alike, per-code counts, recency and days
    # since last (what count models see) carry almost nothing of the order: only the sequence does.
    "order": SyntheticParams(prevalence_a=0.8, prevalence_b=0.8, order_window=26, order_effect=2.0, age_effect=0.1,
                             onset_span=1 / 3, recurrence=0.5, min_visits=12),
    # Negative control: the same codes, prevalences and histories; A and B together (any order) carry the effect.
    "presence": SyntheticParams(prevalence_a=0.8, prevalence_b=0.8, order_window=26, order_effect=0.0,
                                presence_effect=1.5, age_effect=0.1, onset_span=1 / 3, recurrence=0.5,
                                min_visits=12),
    # Positive control against full-strength counts: A -> B across two consecutive visits (vs B -> A) drives the
    # outcome; A and B otherwise recur together, so no per-code aggregate tells the two directions apart.
    "transition": SyntheticParams(prevalence_a=0.8, prevalence_b=0.8, order_effect=2.0, age_effect=0.1,
                                  recurrence=0.3, min_visits=12, pattern="transition"),
    # Its negative twin: the same histories; A and B together (either direction) carry the effect.
    "transition_presence": SyntheticParams(prevalence_a=0.8, prevalence_b=0.8, order_effect=0.0,
                                           presence_effect=1.5, age_effect=0.1, recurrence=0.3, min_visits=12,
                                           pattern="transition"),
    # Pretraining control: a family of 40 individually rare codes (each in ~2% of patients), 2-4 of them per
    # family patient, carries the outcome; only 20% of the patients are labelled, the rest an unlabelled pool.
    # With few labels most family codes are never seen with a label, so counts cannot learn them; a model that
    # learned from the unlabelled sequences that they occur together can.
    "family": SyntheticParams(prevalence_a=0.55, prevalence_b=0.55, order_effect=0.0, age_effect=0.1,
                              min_visits=6, family_share=0.3, family_effect=1.5, labelled_share=0.2),
    # Its negative twin: the same histories; A and B present (common codes) carry the effect, which a handful of
    # labels teach a count model as well as anything.
    "family_presence": SyntheticParams(prevalence_a=0.55, prevalence_b=0.55, order_effect=0.0, presence_effect=1.5,
                                       age_effect=0.1, min_visits=6, family_share=0.3, labelled_share=0.2),
    # Hospital timelines (ehrseq.data.synthetic_icu): multi-day stays with many labs a day, medications, diagnoses
    # at discharge, admission / discharge codes, deaths; the task is readmission or death within 30 days.
    "icu": SyntheticParams(pattern="icu"),
}
PATTERNS = ("onset", "transition", "icu")
FAMILY = tuple(f"ICD10//T{j:02d}.7" for j in range(40))  # the pretraining control's rare family
PAIR_GAP_DAYS = 3  # the transition's second visit comes 1..this many days after its first
CENSOR_DAYS = (180.0, 1095.0)
HORIZON_DAYS = 365
BINARY_TASK = f"outcome_within_{HORIZON_DAYS}d"
SURVIVAL_TASK = "outcome_survival"
MAX_VISITS_BEFORE = 27
MAX_VISITS_AFTER = 3  # so at most 27 + 3 visits + the outcome per patient
_STATIC, _BIRTH_ROW, _VISIT, _OUTCOME = range(4)

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
    codes += [code for code, _, _ in LABS] + [meds.birth_code, *SEX_CODES, PROGRESSION_A, PROGRESSION_B, OUTCOME_CODE]
    codes += FAMILY  # last, so the other codes keep their indices
    return codes, table, item_cdf, background_idx


_CODES, _CLUSTER_TABLE, _ITEM_CDF, _BACKGROUND_IDX = _catalog()
_LAB0 = _CODES.index(LABS[0][0])
_BIRTH = _CODES.index(meds.birth_code)
_SEX0 = _CODES.index(SEX_CODES[0])
_A_IDX, _B_IDX, _OUTCOME_IDX = (_CODES.index(c) for c in (PROGRESSION_A, PROGRESSION_B, OUTCOME_CODE))
_FAMILY0 = _CODES.index(FAMILY[0])
_CODE_DICT = pa.array(_CODES, pa.string())
_CLUSTER_W = 1.0 / np.arange(1, NUM_CLUSTERS + 1) ** 0.5  # some conditions are more prevalent
_BACKGROUND_P = 1.0 / np.arange(1, NUM_BACKGROUND + 1) ** 1.1
_BACKGROUND_CDF = np.cumsum(_BACKGROUND_P / _BACKGROUND_P.sum())
_BACKGROUND_CDF[-1] = 1.0
_LAB_MEAN, _LAB_SD = np.array([(mean, sd) for _, mean, sd in LABS]).T


def code_clusters() -> dict[str, int]:
    """Each comorbidity-cluster code (diagnoses and drugs) -> its planted cluster, 0..NUM_CLUSTERS-1.

    The ground truth that code embeddings should recover: codes of one cluster co-occur in patients.
    """
    return {_CODES[i]: k for k, row in enumerate(_CLUSTER_TABLE.tolist()) for i in row}


def generate_cohort(num_patients: int, seed: int, params: SyntheticParams = PRESETS["default"]) -> pa.Table:
    """A MEDS data table of `num_patients` synthetic subjects, deterministic in (num_patients, seed, params)."""
    return generate_synthetic(num_patients, seed, params).data


def generate_synthetic(num_patients: int, seed: int, params: SyntheticParams = PRESETS["default"],
                       chunk_size: int = 100_000) -> SyntheticCohort:
    """The cohort, its labels and true risks; deterministic in (num_patients, seed, params, chunk_size)."""
    if num_patients < 1:
        raise ValueError(f"num_patients must be at least 1, got {num_patients}")
    if params.pattern == "icu":

        return generate_icu(num_patients, seed)
    sizes = [min(chunk_size, num_patients - start) for start in range(0, num_patients, chunk_size)]
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(sizes))]
    tables, outcomes, last_id = [], [], 10_000
    for n, rng in zip(sizes, rngs, strict=True):
        table, outcome = _simulate_chunk(n, rng, params, first_id=last_id)
        tables.append(table)
        outcomes.append(outcome)
        last_id = int(outcome["subject_id"][-1])
    outcome = {k: np.concatenate([o[k] for o in outcomes]) for k in outcomes[0]}
    labels, oracle = _labels(outcome)
    return SyntheticCohort(data=pa.concat_tables(tables), labels=labels, oracle=oracle)


def _simulate_chunk(n: int, rng: np.random.Generator, params: SyntheticParams,
                    first_id: int) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """`n` patients: their MEDS rows (sorted by subject then time, static rows first) and outcomes."""
    # Patients.
    subject_ids = first_id + np.cumsum(rng.integers(1, 20, n))
    sex = rng.integers(0, 2, n)
    child = rng.random(n) < 0.15
    age_years = np.where(child, rng.uniform(0, 18, n), np.clip(rng.normal(52, 17, n), 18, 90))
    num_pre = np.clip(2 + rng.lognormal(1.2, 0.9, n).astype(np.int64), params.min_visits, MAX_VISITS_BEFORE)
    num_active = 1 + rng.binomial(2, np.clip(age_years / 90, 0.05, 0.85))  # 1-3 clusters, more with age
    # Gumbel top-k: each patient's clusters, sampled without replacement by prevalence.
    cluster_rank = np.argsort(-(np.log(_CLUSTER_W) + rng.gumbel(size=(n, NUM_CLUSTERS))), axis=1)
    first_day = _EPOCH_DAY_2005 + rng.integers(0, 15 * 365, n)
    birth_day = first_day - np.round(age_years * 365.25).astype(np.int64)
    gap_scale = rng.uniform(20, 180, n)

    # Candidate visits: num_pre before the prediction time, then up to MAX_VISITS_AFTER until censoring.
    num_cand = num_pre + MAX_VISITS_AFTER
    cand_patient = np.repeat(np.arange(n), num_cand)
    starts = np.cumsum(num_cand) - num_cand
    gaps = np.clip(np.ceil(rng.exponential(gap_scale[cand_patient])), 1, 365).astype(np.int64)
    gaps[starts] = 0
    day = np.cumsum(gaps)
    day -= np.repeat(day[starts], num_cand)
    day += first_day[cand_patient]
    cand_us = day * _DAY_US + rng.integers(7 * 3600, 19 * 3600, len(day)) * 1_000_000
    is_before = np.arange(len(day)) - starts[cand_patient] < num_pre[cand_patient]
    prediction_day = day[starts + num_pre - 1]
    prediction_us = (prediction_day + 1) * _DAY_US - 1_000_000  # 23:59:59 on the last visit's day

    # The planted progression: A and B first recorded at random visits in the leading onset_span of the history.
    has_a, has_b = rng.random(n) < params.prevalence_a, rng.random(n) < params.prevalence_b
    onset_visits = np.maximum(2, np.ceil(num_pre * params.onset_span - 1e-9).astype(np.int64))  # (n,)
    visit_a = (rng.random(n) * onset_visits).astype(np.int64)
    visit_b = (rng.random(n) * onset_visits).astype(np.int64)
    step = np.where(rng.random(n) < 0.5, 1, -1)  # never the same visit; either side, so neither order gains
    visit_b = np.where(visit_b == visit_a, (visit_a + step) % onset_visits, visit_b)
    a_then_b = has_a & has_b & (visit_b > visit_a) & (visit_b - visit_a <= params.order_window)
    stratum = np.where(has_a & has_b, onset_visits, -1)  # what fixes the chance of the order term
    transition = params.pattern == "transition"
    if transition:  # the pair: visit pair_visit (A or B alone), and a visit pair_gap days later (the other)
        pair_visit, pair_gap = _pair_visits(rng, num_pre, day, starts)
        paired = has_a & has_b & (pair_visit >= 0)
        a_then_b = paired & (rng.random(n) < 0.5)
        stratum = np.where(paired, 0, -1)
    family = params.family_share > 0
    if family:  # each family patient: 2-4 distinct family codes, each at a random visit before the prediction time
        in_family = rng.random(n) < params.family_share
        family_patient = np.repeat(np.flatnonzero(in_family), 2 + rng.binomial(2, 0.5, int(in_family.sum())))
        ranks = np.argsort(rng.random((n, len(FAMILY))), axis=1)  # a random order of the family per patient
        family_code = _FAMILY0 + ranks[family_patient, rank_in_group(family_patient)]
        family_visit = (rng.random(len(family_patient)) * num_pre[family_patient]).astype(np.int64)

    # The outcome: true hazard, event and censoring times in days after the prediction time.
    age_at_prediction = (prediction_day - birth_day) / 365.25
    in_cluster0 = (cluster_rank == 0) & (np.arange(NUM_CLUSTERS) < num_active[:, None])
    p = params  # terms summed in the original order, so the default preset's output stays bit-identical
    base = p.age_effect * (age_at_prediction - 50) / 10 + p.cluster_effect * in_cluster0.any(axis=1)
    rest = p.presence_effect * (has_a & has_b) + p.male_effect * (sex == 1)
    if family:
        rest = rest + p.family_effect * in_family
    hazard = p.base_hazard * np.exp(base + p.order_effect * a_then_b + rest)
    hazard_blind = p.base_hazard * np.exp(base + rest)  # the order-blind ceiling: no order term
    hazard_order = p.base_hazard * np.exp(base + p.order_effect + rest)  # the same with the order term
    event_days = 1 + rng.exponential(1 / hazard)
    censor_days = rng.uniform(*CENSOR_DAYS, n)
    observed = event_days <= censor_days
    keep = is_before | (cand_us - prediction_us[cand_patient] <= censor_days[cand_patient] * _DAY_US)
    visit_patient, visit_us = cand_patient[keep], cand_us[keep]
    num_kept = np.bincount(visit_patient, minlength=n)
    extra_patient = np.flatnonzero(paired) if transition else np.zeros(0, np.int64)  # the pairs' second visits
    extra_us = (day[starts + pair_visit][extra_patient] + pair_gap[extra_patient]) * _DAY_US \
        + rng.integers(7 * 3600, 19 * 3600, len(extra_patient)) * 1_000_000 if transition else extra_patient
    outcome_us = prediction_us + np.round(event_days * 86_400).astype(np.int64) * 1_000_000

    # Every row belongs to a "visit": static sex, birth, real visits and the outcome (one row each, except
    # real visits). Sorting these few visits, not the many rows, puts every row in place.
    kind = np.concatenate([np.full(n, _STATIC), np.full(n, _BIRTH_ROW), np.full(len(visit_us) + len(extra_us), _VISIT),
                           np.full(int(observed.sum()), _OUTCOME)]).astype(np.int8)
    patient = np.concatenate([np.arange(n), np.arange(n), visit_patient, extra_patient, np.flatnonzero(observed)])
    time_us = np.concatenate([np.full(n, np.iinfo(np.int64).min), birth_day * _DAY_US, visit_us, extra_us,
                              outcome_us[observed]])
    order = np.lexsort((time_us, patient))
    kind, patient, time_us = kind[order], patient[order], time_us[order]
    sorted_pos = np.empty(len(order), np.int64)
    sorted_pos[order] = np.arange(len(order))
    first_visit = 2 * n + np.cumsum(num_kept) - num_kept  # unsorted index of each patient's first real visit
    rows_per_visit = np.where(kind == _VISIT, 1 + rng.binomial(7, 0.4, len(kind)), 1)
    recurring = []  # (sorted visit indices, code) of each re-recorded A and B: one row appended to the visit
    patient_of = np.repeat(np.arange(n), num_pre)  # (P,) one entry per visit before the prediction time
    visit_of = np.arange(len(patient_of)) - np.repeat(np.cumsum(num_pre) - num_pre, num_pre)
    if transition:  # A and B together at the first and last visit and w.p. recurrence between, never at the pair
        together = ((visit_of == 0) | (visit_of == num_pre[patient_of] - 1)
                    | (rng.random(len(patient_of)) < params.recurrence))
        together &= ~(paired[patient_of] & (visit_of == pair_visit[patient_of]))
        for planted, code_idx in ((has_a, _A_IDX), (has_b, _B_IDX)):
            again = together & planted[patient_of]
            visits = sorted_pos[first_visit[patient_of[again]] + visit_of[again]]
            recurring.append((visits, rows_per_visit[visits].copy(), code_idx))
            rows_per_visit[visits] += 1
    elif params.recurrence > 0:
        last_onset = np.maximum(np.where(has_a, visit_a, -1), np.where(has_b, visit_b, -1))
        later = visit_of > last_onset[patient_of]
        for planted, code_idx in ((has_a, _A_IDX), (has_b, _B_IDX)):
            again = later & planted[patient_of] & (rng.random(len(patient_of)) < params.recurrence)
            visits = sorted_pos[first_visit[patient_of[again]] + visit_of[again]]
            recurring.append((visits, rows_per_visit[visits].copy(), code_idx))
            rows_per_visit[visits] += 1
    if family:  # one row appended to its visit per family code (two at one visit: one after the other)
        visits = sorted_pos[first_visit[family_patient] + family_visit]
        order_at = np.lexsort((np.arange(len(visits)), visits))
        offset = np.empty(len(visits), np.int64)
        offset[order_at] = rows_per_visit[visits[order_at]] + rank_in_group(visits[order_at])
        recurring.append((visits, offset, family_code))
        np.add.at(rows_per_visit, visits, 1)
    row_start = np.cumsum(rows_per_visit) - rows_per_visit

    # Rows: 1-8 codes per real visit, each from the patient's clusters, the background, or a lab.
    row_visit = np.repeat(np.arange(len(kind)), rows_per_visit)
    row_patient = patient[row_visit]
    row_kind = kind[row_visit]
    code, value = _sample_codes(rng, row_patient, num_active, cluster_rank)
    code = np.select([row_kind == _STATIC, row_kind == _BIRTH_ROW, row_kind == _OUTCOME],
                     [_SEX0 + sex[row_patient], _BIRTH, _OUTCOME_IDX], code)
    value[row_kind != _VISIT] = np.nan
    # A and B onsets (or the transition pair) replace the first code of their visits (pre-prediction visits are
    # never dropped); recurrences fill the rows appended to their visits.
    if transition:
        pair = np.flatnonzero(paired)
        first, second = (row_start[sorted_pos[first_visit[pair] + pair_visit[pair]]],
                         row_start[sorted_pos[2 * n + len(visit_us) + np.arange(len(pair))]])
        ab = a_then_b[pair]
        code[first], code[second] = np.where(ab, _A_IDX, _B_IDX), np.where(ab, _B_IDX, _A_IDX)
        value[first], value[second] = np.nan, np.nan
    else:
        for planted, visit, code_idx in ((has_a, visit_a, _A_IDX), (has_b, visit_b, _B_IDX)):
            rows = row_start[sorted_pos[first_visit[planted] + visit[planted]]]
            code[rows], value[rows] = code_idx, np.nan
    for visits, offset, code_idx in recurring:
        rows = row_start[visits] + offset
        code[rows], value[rows] = code_idx, np.nan

    row_time = time_us[row_visit]
    null_time = row_kind == _STATIC
    table = pa.table(
        {
            "subject_id": pa.array(subject_ids[row_patient]),
            "time": pa.array(row_time, pa.timestamp("us"), mask=null_time),
            "code": pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), _CODE_DICT).dictionary_decode(),
            "numeric_value": pa.array(value, mask=np.isnan(value)),
        }
    )
    outcome = {"subject_id": subject_ids, "prediction_us": prediction_us, "event_days": event_days,
               "censor_days": censor_days, "true_risk": -np.expm1(-hazard * (HORIZON_DAYS - 1)),
               "true_risk_order_blind": -np.expm1(-hazard_blind * (HORIZON_DAYS - 1)),
               "true_risk_order_marginal": _order_marginal(a_then_b, stratum, hazard_order, hazard_blind)}
    if params.labelled_share < 1:  # the rest are an unlabelled pool
        outcome["labelled"] = rng.random(n) < params.labelled_share
    return meds.DataSchema.align(table), outcome


def _pair_visits(rng: np.random.Generator, num_pre: np.ndarray, day: np.ndarray,
                 starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per patient, a random visit in the second half of the history before the prediction time (not its last)
    followed by a gap of >= 2 days, -1 when there is none; and the days (1..PAIR_GAP_DAYS, within that gap) to the
    pair's second visit."""
    n = len(num_pre)
    patient_of = np.repeat(np.arange(n), num_pre)
    visit_of = np.arange(len(patient_of)) - np.repeat(np.cumsum(num_pre) - num_pre, num_pre)
    at = starts[patient_of] + visit_of  # candidate visit index into day
    last = visit_of >= num_pre[patient_of] - 1
    gap = np.where(last, 0, day[np.minimum(at + 1, len(day) - 1)] - day[at])
    ok = (visit_of >= (num_pre[patient_of] + 1) // 2) & ~last & (gap >= 2)
    key = np.where(ok, rng.random(len(at)), -1.0)
    order = np.lexsort((key, patient_of))  # each patient's best key last
    chosen = order[np.r_[np.flatnonzero(np.diff(patient_of[order])), len(order) - 1]]
    pair_visit = np.where(key[chosen] >= 0, visit_of[chosen], -1)
    pair_gap = 1 + (rng.random(n) * np.minimum(PAIR_GAP_DAYS, np.maximum(gap[chosen] - 1, 1))).astype(np.int64)
    return pair_visit, pair_gap


def _order_marginal(order: np.ndarray, stratum: np.ndarray, hazard_order: np.ndarray,
                    hazard_blind: np.ndarray) -> np.ndarray:
    """P(event within the horizon) averaged over the order term: its share among patients of the same stratum
    (-1: no chance of it) mixes the risk with and without it."""
    share = np.zeros(len(order))
    inside = stratum >= 0
    if inside.any():
        groups, index = np.unique(stratum[inside], return_inverse=True)
        share[inside] = (np.bincount(index, weights=order[inside]) / np.bincount(index))[index]
    with_order, without = (-np.expm1(-hazard * (HORIZON_DAYS - 1)) for hazard in (hazard_order, hazard_blind))
    return without + share * (with_order - without)  # exactly `without` when the order term is 0


def _sample_codes(rng: np.random.Generator, row_patient: np.ndarray, num_active: np.ndarray,
                  cluster_rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: 70% a code of one of the patient's clusters, 20% background, 10% a lab with a value."""
    m = len(row_patient)
    kind = rng.random(m)
    which = (rng.random(m) * num_active[row_patient]).astype(np.int64)
    cluster = cluster_rank[row_patient, which]
    item = np.searchsorted(_ITEM_CDF, rng.random(m), side="right")
    lab = rng.integers(0, len(LABS), m)
    background = _BACKGROUND_IDX[np.searchsorted(_BACKGROUND_CDF, rng.random(m), side="right")]
    code = np.where(kind < 0.7, _CLUSTER_TABLE[cluster, item], np.where(kind < 0.9, background, _LAB0 + lab))
    lab_value = np.round(_LAB_MEAN[lab] + _LAB_SD[lab] * rng.normal(size=m), 1)
    value = np.where(kind >= 0.9, lab_value, np.nan).astype(np.float32)
    return code, value


def _labels(outcome: dict[str, np.ndarray]) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """MEDS label tables (binary and survival) and the true risk of each labelled patient."""
    event_days, censor_days = outcome["event_days"], outcome["censor_days"]
    observed = event_days <= censor_days
    followed = np.minimum(event_days, censor_days)
    positive = observed & (event_days <= HORIZON_DAYS)
    known = positive | (followed >= HORIZON_DAYS)  # censored before the horizon without an event: unknown
    labelled = outcome.get("labelled", np.ones(len(known), bool))  # the rest: an unlabelled pool
    prediction_time = pa.array(outcome["prediction_us"], pa.timestamp("us"))
    subject_id = pa.array(outcome["subject_id"])
    mask, pool = pa.array(known & labelled), pa.array(labelled)
    labels = {
        BINARY_TASK: pa.table({"subject_id": subject_id.filter(mask),
                               "prediction_time": prediction_time.filter(mask),
                               "boolean_value": pa.array(positive[known & labelled])}),
        SURVIVAL_TASK: pa.table({"subject_id": subject_id, "prediction_time": prediction_time,
                                 "boolean_value": pa.array(observed),
                                 "float_value": pa.array(followed.astype(np.float32))}).filter(pool),
    }
    oracle = pa.table({"subject_id": subject_id, "prediction_time": prediction_time,
                       **{k: outcome[k] for k in ("true_risk", "true_risk_order_blind", "true_risk_order_marginal")}})
    oracle = {BINARY_TASK: oracle.filter(mask), SURVIVAL_TASK: oracle.filter(pool)}
    return {task: meds.LabelSchema.align(t) for task, t in labels.items()}, oracle


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
