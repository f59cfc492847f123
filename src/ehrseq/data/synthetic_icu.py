"""An ICU-like synthetic cohort (preset `icu`): hospital timelines laid out as MEDS-Transforms' MIMIC-IV extraction
lays them out, so coverage, data.codes and admission visits are tested and documented without real data.

Each patient has one to MAX_STAYS hospital stays over one to three years of follow-up, and a few outpatient lab
days before and between them. A stay is written as MIMIC-IV's MEDS release writes one:

- `ED_REGISTRATION` and `ED_OUT` hours before an emergency admission; `HOSPITAL_ADMISSION//<type>//<location>` at
  admission and `HOSPITAL_DISCHARGE//<location>` at discharge (`//DIED`, with `MEDS_DEATH`, for deaths in hospital);
  `ICU_ADMISSION//<unit>` / `ICU_DISCHARGE//<unit>` around an ICU stay inside it;
- labs `LAB//<itemid>//<unit>` with values: a routine panel twice a day, others on most days, blood gases four
  times a day in the ICU; and labs recorded without a value (`LAB//<itemid>//UNK`, urinalysis text results);
- medications `MEDICATION//<name>//Administered`, one to three doses a day over part of the stay;
- procedures `PROCEDURE//ICD//10//<code>`, and the stay's diagnoses `DIAGNOSIS//ICD//10//<code>` stamped at
  discharge time, as MIMIC-IV stamps hospital diagnoses.

Statics are `GENDER//F|M` (null time) and `MEDS_BIRTH`. About 80% of the rows are labs.

The task, READMISSION_TASK: at each discharge alive, readmission (the next stay's admission) or death within 30
days. Its prediction time is the discharge time, so the input is cut strictly before it: the stay's own discharge
diagnoses are not seen (those of earlier stays are). The risk rises with chronic heart, kidney and lung disease
(their diagnoses, drugs and kidney labs show them), the stay's severity (ICU, lactate, length of stay) and frailty
(earlier stays); rows whose 30 days run past the end of follow-up without an event are left out. No oracle.
Vectorised with numpy, deterministic in (num_patients, seed).
"""

from __future__ import annotations

import meds
import numpy as np
import pyarrow as pa

from ehrseq.data.synthetic_cohort import SyntheticCohort

READMISSION_TASK = "readmission_or_death_30d"
MAX_STAYS = 6
FOLLOW_UP_YEARS = (1.0, 3.0)
OUTPATIENT_PER_YEAR = 3.0
_HOUR = 3_600 * 1_000_000
_DAY = 24 * _HOUR
_START_DAY = int(np.datetime64("2150-01-01", "D").astype(np.int64))  # MIMIC-IV's shifted years

# (itemid, unit, mean, sd, severity loading, kidney loading): value = mean + sd * (N(0, 1) + loadings . latents)
ROUTINE = (  # chemistry and blood count, twice a day
    ("50912", "mg/dL", 1.0, 0.3, 0.4, 2.0), ("51006", "mg/dL", 18, 6, 0.4, 1.5), ("50971", "mEq/L", 4.2, 0.4, 0.2, 0.5),
    ("50983", "mEq/L", 139, 3, -0.3, 0), ("50902", "mEq/L", 103, 4, 0, 0), ("50882", "mEq/L", 24, 3, -0.5, -0.4),
    ("50931", "mg/dL", 125, 35, 0.3, 0), ("50868", "mEq/L", 13, 3, 0.5, 0.3), ("50960", "mg/dL", 2.0, 0.3, 0, 0),
    ("50970", "mg/dL", 3.5, 0.8, 0.2, 0.8), ("50893", "mg/dL", 8.6, 0.6, -0.2, 0), ("51221", "%", 32, 5, -0.3, -0.3),
    ("51222", "g/dL", 10.5, 1.8, -0.3, -0.4), ("51265", "K/uL", 220, 80, -0.2, 0), ("51301", "K/uL", 9, 3.5, 0.6, 0),
    ("51248", "pg", 30, 2, 0, 0), ("51249", "%", 33, 1.2, 0, 0), ("51250", "fL", 90, 5, 0, 0),
    ("51277", "%", 15, 2, 0.3, 0.2), ("51279", "m/uL", 3.6, 0.6, -0.3, -0.3))
OCCASIONAL = (  # coagulation, liver, cardiac: most days
    ("51237", "ratio", 1.3, 0.3, 0.3, 0), ("51274", "sec", 14, 3, 0.3, 0), ("51275", "sec", 32, 6, 0.2, 0),
    ("50861", "IU/L", 30, 20, 0.3, 0), ("50878", "IU/L", 35, 25, 0.3, 0), ("50863", "IU/L", 90, 40, 0.1, 0),
    ("50885", "mg/dL", 0.8, 0.5, 0.3, 0), ("50862", "g/dL", 3.3, 0.5, -0.5, -0.2), ("50956", "IU/L", 40, 20, 0.1, 0),
    ("51003", "ng/mL", 0.05, 0.1, 0.4, 0.3), ("50910", "IU/L", 150, 120, 0.3, 0), ("50954", "IU/L", 250, 90, 0.4, 0),
    ("50889", "mg/L", 40, 30, 0.6, 0), ("51144", "%", 2, 3, 0.4, 0), ("50852", "%", 6.0, 1.0, 0, 0),
    ("50907", "mg/dL", 170, 40, 0, 0), ("51000", "mg/dL", 140, 60, 0, 0), ("50953", "ug/dL", 50, 25, -0.3, 0),
    ("50924", "ng/mL", 300, 200, 0.3, 0.2), ("51214", "mg/dL", 350, 120, 0.3, 0), ("50976", "g/dL", 6.2, 0.7, -0.3, 0),
    ("50927", "IU/L", 60, 50, 0.2, 0), ("51196", "ng/mL", 900, 700, 0.4, 0), ("50935", "mg/dL", 120, 60, -0.2, 0))
DIFFERENTIAL = (  # white cell differential, once a day
    ("51256", "%", 72, 10, 0.5, 0), ("51244", "%", 17, 8, -0.5, 0), ("51254", "%", 7, 2.5, 0, 0),
    ("51200", "%", 1.5, 1.5, -0.2, 0), ("51146", "%", 0.4, 0.3, 0, 0))
GASES = (  # blood gases, four times a day in the ICU
    ("50820", "units", 7.38, 0.06, -0.6, -0.2), ("50818", "mm Hg", 42, 8, 0.2, 0), ("50821", "mm Hg", 110, 45, -0.2, 0),
    ("50813", "mmol/L", 1.6, 0.8, 1.0, 0), ("50802", "mEq/L", 0, 4, -0.6, -0.3), ("50804", "mEq/L", 25, 4, -0.4, -0.3),
    ("50808", "mmol/L", 1.12, 0.08, 0, 0))
NO_VALUE = ("51463", "51464", "51466", "51487", "51506", "51508", "51519", "51484")  # urinalysis: text results
CHRONIC = (("I50.9", 0.25), ("N18.3", 0.2), ("J44.9", 0.15), ("E11.9", 0.3), ("I10", 0.5), ("I48.91", 0.2))
ACUTE = ("A41.9", "J18.9", "N39.0", "N17.9", "E87.1", "D64.9", "R41.0", "K92.2", "I21.4", "J96.01")
PROCEDURES = ("5A1955Z", "02HV33Z", "0BH17EZ", "3E0436Z", "0DJ08ZZ")
MEDICATIONS = ("Heparin", "Furosemide", "Insulin", "Metoprolol Tartrate", "Vancomycin", "Piperacillin-Tazobactam",
               "Acetaminophen", "Pantoprazole", "Ondansetron", "Docusate Sodium", "Senna", "Potassium Chloride",
               "Magnesium Sulfate", "Albuterol", "Ipratropium", "Lisinopril", "Amlodipine", "Atorvastatin", "Aspirin",
               "Warfarin", "Ceftriaxone", "Norepinephrine", "Propofol", "Fentanyl", "Midazolam", "Oxycodone",
               "Morphine", "Lorazepam", "Sodium Chloride 0.9%", "Dextrose 5%")
ADMISSIONS = (("EW EMER.//EMERGENCY ROOM", 0.75), ("URGENT//TRANSFER FROM HOSPITAL", 0.1),
              ("ELECTIVE//PHYSICIAN REFERRAL", 0.15))
DISCHARGES = ("HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY")
ICU_UNIT = "Medical Intensive Care Unit (MICU)"


def _catalog() -> tuple[list[str], np.ndarray]:
    """Every code, and (code,) lab parameters (mean, sd, severity and kidney loadings; NaN mean: no value)."""
    labs = [(f"LAB//{i}//{u}", (m, s, a, k)) for i, u, m, s, a, k in (*ROUTINE, *OCCASIONAL, *DIFFERENTIAL, *GASES)]
    labs += [(f"LAB//{i}//UNK", (np.nan, 0, 0, 0)) for i in NO_VALUE]
    other = [meds.birth_code, meds.death_code, "GENDER//F", "GENDER//M", "ED_REGISTRATION", "ED_OUT",
             *(f"HOSPITAL_ADMISSION//{a}" for a, _ in ADMISSIONS),
             *(f"HOSPITAL_DISCHARGE//{d}" for d in (*DISCHARGES, "DIED")),
             f"ICU_ADMISSION//{ICU_UNIT}", f"ICU_DISCHARGE//{ICU_UNIT}",
             *(f"DIAGNOSIS//ICD//10//{c}" for c in (*(c for c, _ in CHRONIC), *ACUTE)),
             *(f"PROCEDURE//ICD//10//{c}" for c in PROCEDURES),
             *(f"MEDICATION//{m}//Administered" for m in MEDICATIONS)]
    params = np.array([p for _, p in labs] + [(np.nan, 0, 0, 0)] * len(other), np.float64)
    return [c for c, _ in labs] + other, params


_CODES, _LAB = _catalog()
_INDEX = {c: i for i, c in enumerate(_CODES)}
_ROUTINE, _OCCASIONAL, _DIFFERENTIAL, _GASES = (np.array([_INDEX[f"LAB//{i}//{u}"] for i, u, *_ in group])
                                                for group in (ROUTINE, OCCASIONAL, DIFFERENTIAL, GASES))
_NO_VALUE = np.array([_INDEX[f"LAB//{i}//UNK"] for i in NO_VALUE])


def generate_icu(num_patients: int, seed: int) -> SyntheticCohort:
    """The cohort: MEDS rows (sorted by subject, then time; statics first) and the READMISSION_TASK labels."""
    rng = np.random.default_rng(seed)
    n = num_patients
    subject_ids = 10_000 + np.cumsum(rng.integers(1, 20, n))
    male = rng.random(n) < 0.5
    age = np.clip(rng.normal(64, 15, n), 18, 95)  # years at the first admission
    frailty = rng.normal(0, 1, n)
    chronic = np.stack([rng.random(n) < _sigmoid(np.log(p / (1 - p)) + 0.5 * frailty + 0.3 * (age - 64) / 10)
                        for _, p in CHRONIC], 1)  # (n, C)
    first_admit = (_START_DAY + rng.uniform(0, 3650, n)) * _DAY
    end = first_admit + rng.uniform(*FOLLOW_UP_YEARS, n) * 365 * _DAY
    stays, end = _stays(rng, age, frailty, chronic, first_admit.astype(np.int64), end.astype(np.int64))
    rows = [_static_rows(male, age, first_admit), _stay_codes(rng, stays, chronic), _labs(rng, stays, chronic),
            _medications(rng, stays, chronic), _outpatient(rng, stays, first_admit, end)]
    patient, time, code, value = (np.concatenate([r[k] for r in rows]) for k in range(4))
    order = np.lexsort((time, patient))  # stable: a stay's codes at one moment keep their order
    patient, time, code, value = patient[order], time[order], code[order], value[order]
    table = pa.table({
        "subject_id": pa.array(subject_ids[patient]),
        "time": pa.array(time, pa.timestamp("us"), mask=time == np.iinfo(np.int64).min),
        "code": pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), pa.array(_CODES)).dictionary_decode(),
        "numeric_value": pa.array(value.astype(np.float32), mask=np.isnan(value)),
    })
    labels = pa.table({"subject_id": pa.array(subject_ids[stays["patient"][stays["labelled"]]]),
                       "prediction_time": pa.array(stays["discharge"][stays["labelled"]], pa.timestamp("us")),
                       "boolean_value": pa.array(stays["outcome"][stays["labelled"]])})
    return SyntheticCohort(meds.DataSchema.align(table), {READMISSION_TASK: meds.LabelSchema.align(labels)}, {})


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _stays(rng: np.random.Generator, age: np.ndarray, frailty: np.ndarray, chronic: np.ndarray,
           first_admit: np.ndarray, end: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every stay (S,), patient by patient in time order: times, severity, ICU, death, outcome and label flags;
    and each patient's end of follow-up (the MAX_STAYS-th discharge where that comes first)."""
    n, end = len(age), end.copy()
    out: dict[str, list[np.ndarray]] = {}
    admit, alive, prior = first_admit.copy(), np.ones(n, bool), np.zeros(n)
    risk = 0.7 * chronic[:, 0] + 0.6 * chronic[:, 1] + 0.5 * chronic[:, 2] + 0.4 * frailty + 0.2 * (age - 64) / 10
    for k in range(MAX_STAYS):
        p = np.flatnonzero(alive & (admit < end))
        if not len(p):
            break
        m = len(p)
        severity = 0.4 * frailty[p] + rng.normal(0, 1, m)
        los = np.clip(np.exp(1.6 + 0.35 * severity + 0.5 * rng.normal(0, 1, m)), 0.5, 60)  # days
        discharge = admit[p] + (los * _DAY).astype(np.int64)
        if k == MAX_STAYS - 1:  # no later stay is written: follow-up ends here
            end[p] = np.minimum(end[p], discharge)
        icu = rng.random(m) < _sigmoid(-1.0 + severity)
        icu_in = admit[p] + (rng.uniform(0, np.minimum(1, los / 3)) * _DAY).astype(np.int64)
        icu_days = np.minimum(np.exp(0.5 + 0.3 * severity + 0.5 * rng.normal(0, 1, m)),
                              (discharge - icu_in) / _DAY - 0.1)
        icu &= icu_days > 0.25
        died = rng.random(m) < _sigmoid(-4.0 + 0.8 * severity + 0.25 * (age[p] - 64) / 10 + 0.8 * icu)
        early = rng.random(m) < _sigmoid(-2.4 + risk[p] + 0.4 * severity + 0.2 * np.minimum(prior[p], 3))
        gap = np.where(early, rng.uniform(1, 30, m), 30 + rng.exponential(365, m))
        death_after = rng.random(m) < _sigmoid(-4.2 + 0.5 * severity + 0.5 * frailty[p] + 0.3 * (age[p] - 64) / 10)
        death_time = discharge + (rng.uniform(1, 30, m) * _DAY).astype(np.int64)
        next_admit = discharge + (gap * _DAY).astype(np.int64)
        dies_first = death_after & (death_time < next_admit) & (death_time < end[p])  # recorded deaths only
        readmitted = ~died & ~dies_first & (next_admit < end[p]) & (next_admit - discharge <= 30 * _DAY)
        outcome = readmitted | (dies_first & (death_time - discharge <= 30 * _DAY))
        labelled = ~died & (outcome | (end[p] - discharge >= 30 * _DAY))
        kind = rng.choice(len(ADMISSIONS), m, p=[w for _, w in ADMISSIONS])
        icu_out = icu_in + (np.maximum(icu_days, 0) * _DAY).astype(np.int64)
        for name, values in (("patient", p), ("admit", admit[p].copy()), ("discharge", discharge),
                             ("severity", severity), ("icu", icu), ("icu_in", icu_in), ("icu_out", icu_out),
                             ("died", died), ("death_after", np.where(dies_first, death_time, -1)),
                             ("outcome", outcome), ("labelled", labelled), ("kind", kind),
                             ("infection", rng.random(m) < 0.35)):
            out.setdefault(name, []).append(values)
        alive[p] = ~died & ~dies_first
        admit[p], prior[p] = next_admit, prior[p] + 1
    stays = {k: np.concatenate(v) for k, v in out.items()}
    order = np.lexsort((stays["admit"], stays["patient"]))
    return {k: v[order] for k, v in stays.items()}, end


Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (patient, time us, code index, value) each (R,)


def _rows(patient: np.ndarray, time: np.ndarray, code: np.ndarray, value: np.ndarray | None = None) -> Rows:
    code = np.broadcast_to(code, patient.shape).astype(np.int64)
    return patient, time.astype(np.int64), code, np.full(len(patient), np.nan) if value is None else value


def _static_rows(male: np.ndarray, age: np.ndarray, first_admit: np.ndarray) -> Rows:
    n = len(male)
    birth = (first_admit - age * 365.25 * _DAY).astype(np.int64) // _DAY * _DAY
    gender = np.where(male, _INDEX["GENDER//M"], _INDEX["GENDER//F"])
    return (np.r_[np.arange(n), np.arange(n)], np.r_[np.full(n, np.iinfo(np.int64).min), birth],
            np.r_[gender, np.full(n, _INDEX[meds.birth_code])], np.full(2 * n, np.nan))


def _stay_codes(rng: np.random.Generator, s: dict[str, np.ndarray], chronic: np.ndarray) -> Rows:
    """ED, admission, ICU, procedure, discharge, death and diagnosis rows of every stay."""
    S, p = len(s["patient"]), s["patient"]
    parts = []
    emergency = s["kind"] == 0
    ed = s["admit"] - (rng.uniform(2, 8, S) * _HOUR).astype(np.int64)
    parts += [_rows(p[emergency], ed[emergency], _INDEX["ED_REGISTRATION"]),
              _rows(p[emergency], s["admit"][emergency], _INDEX["ED_OUT"])]
    parts.append(_rows(p, s["admit"], np.array([_INDEX[f"HOSPITAL_ADMISSION//{a}"] for a, _ in ADMISSIONS])[s["kind"]]))
    icu = s["icu"]
    parts += [_rows(p[icu], s["icu_in"][icu], _INDEX[f"ICU_ADMISSION//{ICU_UNIT}"]),
              _rows(p[icu], s["icu_out"][icu], _INDEX[f"ICU_DISCHARGE//{ICU_UNIT}"])]
    for j, (name, base) in enumerate(zip(PROCEDURES, (0.4, 0.5, 0.35, 0.05, 0.05), strict=True)):
        done = rng.random(S) < (base * icu if j < 3 else base)
        lo, hi = np.where(icu, s["icu_in"], s["admit"]), np.where(icu, s["icu_out"], s["discharge"])
        at = lo + ((hi - lo) * rng.random(S)).astype(np.int64)
        parts.append(_rows(p[done], at[done], _INDEX[f"PROCEDURE//ICD//10//{name}"]))
    # diagnoses at discharge: the patient's chronic ones (most of the time) and the stay's acute ones
    for c, (name, _) in enumerate(CHRONIC):
        coded = chronic[p, c] & (rng.random(S) < 0.9)
        parts.append(_rows(p[coded], s["discharge"][coded], _INDEX[f"DIAGNOSIS//ICD//10//{name}"]))
    acute_p = np.stack([0.6 * s["infection"] * (s["severity"] > 0.5), 0.5 * s["infection"], 0.4 * s["infection"],
                        0.2 + 0.3 * chronic[p, 1], np.full(S, 0.15), np.full(S, 0.25), np.full(S, 0.1),
                        np.full(S, 0.08), np.full(S, 0.05), 0.4 * s["icu"]], 1)
    for a, name in enumerate(ACUTE):
        coded = rng.random(S) < acute_p[:, a]
        parts.append(_rows(p[coded], s["discharge"][coded], _INDEX[f"DIAGNOSIS//ICD//10//{name}"]))
    where = np.array([_INDEX[f"HOSPITAL_DISCHARGE//{d}"] for d in DISCHARGES])[rng.integers(0, len(DISCHARGES), S)]
    parts.append(_rows(p, s["discharge"], np.where(s["died"], _INDEX["HOSPITAL_DISCHARGE//DIED"], where)))
    died, after = s["died"], s["death_after"] >= 0
    parts += [_rows(p[died], s["discharge"][died], _INDEX[meds.death_code]),
              _rows(p[after], s["death_after"][after], _INDEX[meds.death_code])]
    return tuple(np.concatenate([part[k] for part in parts]) for k in range(4))


def _stay_days(s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(stay, midnight us) of every calendar day a stay touches."""
    first, last = s["admit"] // _DAY, s["discharge"] // _DAY
    days = last - first + 1
    stay = np.repeat(np.arange(len(days)), days)
    return stay, (first[stay] + np.arange(days.sum()) - np.repeat(np.cumsum(days) - days, days)) * _DAY


def _panel(rng: np.random.Generator, s: dict[str, np.ndarray], hours: tuple[int, ...], codes: np.ndarray,
           share: float, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lab panel drawn at `hours` of each stay day (one draw time for the panel, jittered), each code in it with
    probability `share`, kept where the draw falls in [lo, hi) of its stay: (stay, time, code) per row."""
    stay, midnight = _stay_days(s)
    stay, draw = np.repeat(stay, len(hours)), np.repeat(midnight, len(hours)) + np.tile(np.array(hours) * _HOUR,
                                                                                       len(midnight))
    draw += rng.integers(0, 60, len(draw)) * 60_000_000
    inside = (draw >= lo[stay]) & (draw < hi[stay])
    stay, draw = np.repeat(stay[inside], len(codes)), np.repeat(draw[inside], len(codes))
    code = np.tile(codes, int(inside.sum()))
    taken = rng.random(len(code)) < share
    return stay[taken], draw[taken], code[taken]


def _labs(rng: np.random.Generator, s: dict[str, np.ndarray], chronic: np.ndarray) -> Rows:
    """Every stay's labs; values from each lab's mean and spread, moved by the stay's severity and kidney disease."""
    admit, discharge = s["admit"], s["discharge"]
    icu_in, icu_out = np.where(s["icu"], s["icu_in"], 0), np.where(s["icu"], s["icu_out"], 0)
    panels = [_panel(rng, s, (5, 17), _ROUTINE, 1.0, admit, discharge),
              _panel(rng, s, (8,), _OCCASIONAL, 0.6, admit, discharge),
              _panel(rng, s, (6,), _DIFFERENTIAL, 1.0, admit, discharge),
              _panel(rng, s, (11,), _NO_VALUE, 0.6, admit, discharge),
              _panel(rng, s, (0, 6, 12, 18), _GASES, 1.0, icu_in, icu_out)]
    stay, time, code = (np.concatenate([panel[k] for panel in panels]) for k in range(3))
    kidney = chronic[s["patient"], 1] + 0.5 * (s["severity"] > 1)
    return _rows(s["patient"][stay], time, code, _lab_values(rng, code, s["severity"][stay], kidney[stay]))


def _lab_values(rng: np.random.Generator, code: np.ndarray, severity: np.ndarray, kidney: np.ndarray) -> np.ndarray:
    """(R,) a value per lab row, NaN for labs recorded without one."""
    mean, sd, load, kidney_load = _LAB[code].T
    value = mean + sd * (rng.normal(0, 1, len(code)) + load * severity + kidney_load * kidney)
    return np.round(np.where(mean > 0, np.maximum(value, 0), value), 2)  # (base excess, mean 0, may be negative)


def _medications(rng: np.random.Generator, s: dict[str, np.ndarray], chronic: np.ndarray) -> Rows:
    """Each stay's drugs, chosen by its conditions, given 1-3 times a day over part of the stay."""
    S, p = len(s["patient"]), s["patient"]
    odds = np.full((S, len(MEDICATIONS)), 0.2)
    boosts = {"Furosemide": chronic[p, 0], "Insulin": chronic[p, 3], "Albuterol": chronic[p, 2],
              "Ipratropium": chronic[p, 2], "Vancomycin": s["infection"], "Piperacillin-Tazobactam": s["infection"],
              "Ceftriaxone": s["infection"], "Lisinopril": chronic[p, 4], "Warfarin": chronic[p, 5],
              **{drug: s["icu"] for drug in ("Norepinephrine", "Propofol", "Fentanyl", "Midazolam")}}
    for drug, when in boosts.items():
        odds[:, MEDICATIONS.index(drug)] += 0.5 * when
    for drug in ("Norepinephrine", "Propofol", "Fentanyl", "Midazolam"):
        odds[~s["icu"], MEDICATIONS.index(drug)] = 0
    stay, drug = np.nonzero(rng.random(odds.shape) < odds)  # (G,) each course of a drug
    length = s["discharge"][stay] - s["admit"][stay]
    start = s["admit"][stay] + (rng.uniform(0, 0.5, len(stay)) * length).astype(np.int64)
    stop = start + (rng.uniform(0.2, 1, len(stay)) * (s["discharge"][stay] - start)).astype(np.int64)
    doses = rng.integers(1, 4, len(stay))  # a day
    days = (stop // _DAY - start // _DAY + 1) * doses
    course = np.repeat(np.arange(len(stay)), days)
    k = np.arange(days.sum()) - np.repeat(np.cumsum(days) - days, days)
    time = (start[course] // _DAY + k // doses[course]) * _DAY + (6 + (k % doses[course]) * 16 // doses[course]
                                                                 ) * _HOUR
    inside = (time >= start[course]) & (time < stop[course])
    course = course[inside]
    return _rows(p[stay[course]], time[inside], np.array([_INDEX[f"MEDICATION//{m}//Administered"]
                                                          for m in MEDICATIONS])[drug[course]])


def _outpatient(rng: np.random.Generator, s: dict[str, np.ndarray], first_admit: np.ndarray,
                end: np.ndarray) -> Rows:
    """A few outpatient lab days in the year before the first stay and between stays: day visits of 3-6 labs."""
    n = len(first_admit)
    begin = first_admit - 365 * _DAY
    count = rng.poisson(OUTPATIENT_PER_YEAR * (end - begin) / (365 * _DAY))
    patient = np.repeat(np.arange(n), count)
    day = (begin[patient] + ((end - begin)[patient] * rng.random(len(patient))).astype(np.int64)) // _DAY * _DAY
    time = day + (9 + rng.integers(0, 3, len(day))) * _HOUR
    # none within a day of a stay, nor after a death
    lo, hi = s["admit"] - _DAY, np.where(s["died"], np.iinfo(np.int64).max // 2, s["discharge"] + _DAY)
    hi = np.where(s["death_after"] >= 0, np.iinfo(np.int64).max // 2, hi)
    first_stay = np.searchsorted(s["patient"], patient, "left")
    last_stay = np.searchsorted(s["patient"], patient, "right")
    clash = np.zeros(len(time), bool)
    for k in range(MAX_STAYS):
        j = np.minimum(first_stay + k, len(lo) - 1)
        clash |= (first_stay + k < last_stay) & (time >= lo[j]) & (time < hi[j])
    patient, time = patient[~clash], time[~clash]
    visit = np.repeat(np.arange(len(time)), rng.integers(3, 7, len(time)))
    code = _ROUTINE[rng.integers(0, len(_ROUTINE), len(visit))]
    return _rows(patient[visit], time[visit], code, _lab_values(rng, code, np.zeros(len(code)), np.zeros(len(code))))
