"""The job spec: pydantic models for the YAML files under jobs/, and `--set a.b=v` overrides.

Unknown keys are errors everywhere, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ehrseq.data.codes import CodeFilter
from ehrseq.data.synthetic import MAX_VISITS_BEFORE, PRESETS, SyntheticParams
from ehrseq.data.synthetic_icu import READMISSION_TASK
from ehrseq.data.visits import ADMISSION_END, ADMISSION_START, VisitRule
from ehrseq.errors import InputError
from ehrseq.windows import SEQ_LENS
from ehrseq_runner.spec import safe_yaml
from ehrseq_runner.storage.lease import MAX_RENEW_SECONDS
from ehrseq_runner.storage.uri import open_storage, redact_credentials, refuse_credentials, split_run_uri

# The synthetic cohort's planted-outcome labels (ehrseq.data.synthetic BINARY_TASK / SURVIVAL_TASK).
DEFAULT_LABELS = {"binary": "outcome_within_365d", "survival": "outcome_survival"}
BASELINES = ("bag_of_codes", "cox", "gbm")  # count baselines, fitted in one go: no steps, checkpoints or resume
SUPERVISED = ("binary", "survival", "next_visit")
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_COUNT = 10**8  # upper bound of step counts, cohort sizes and budgets: anything larger is a typo


class SpecError(InputError):
    """A spec that cannot be read or does not validate; the message names the file and field."""


class Section(BaseModel):
    """Strict: a number is never read from a bool or a string (`max_steps: true` is no 1, `"20"` no 20)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True)


class SyntheticSpec(Section):
    """The synthetic generator's planted outcome: a named preset, then any parameter overridden (None keeps the
    preset's value). `transition` and `transition_presence` are the positive and negative controls against
    full-strength count baselines; `order` (onset order, which first-occurrence features see) and `presence` its
    older pair; `family` and `family_presence` the pretraining control and its negative twin (ehrseq.data.synthetic);
    `icu` hospital timelines with a readmission task (ehrseq.data.synthetic_icu), which takes no overrides."""

    preset: Literal["default", "order", "presence", "transition", "transition_presence", "family",
                    "family_presence", "icu"] = Field("default", description="The generator's parameter set; "
                                                      "the fields below override its values one by one (icu: a "
                                                      "hospital generator that takes no overrides).")
    prevalence_a: float | None = Field(None, ge=0.0, le=1.0, description="Share of patients given code A.")
    prevalence_b: float | None = Field(None, ge=0.0, le=1.0, description="Share of patients given code B.")
    order_window: int | None = Field(None, ge=1, le=MAX_VISITS_BEFORE - 1,
                                     description="Visits from A's onset to B's that count as A then B.")
    onset_span: float | None = Field(None, gt=0.0, le=1.0, description="A and B are first recorded within this "
                                     "leading share of the visits before the prediction time.")
    recurrence: float | None = Field(None, ge=0.0, le=1.0, description="Once both are recorded, each later visit "
                                     "re-records A and B, each with this probability.")
    min_visits: int | None = Field(None, ge=2, le=MAX_VISITS_BEFORE,
                                   description="Fewest visits before the prediction time.")
    order_effect: float | None = Field(None, ge=-4.0, le=4.0,
                                       description="Log hazard ratio of A followed by B (the order term).")
    presence_effect: float | None = Field(None, ge=-4.0, le=4.0,
                                          description="Log hazard ratio of A and B both present, in any order.")
    age_effect: float | None = Field(None, ge=-2.0, le=2.0, description="Log hazard ratio per decade of age.")
    cluster_effect: float | None = Field(None, ge=-4.0, le=4.0,
                                         description="Log hazard ratio of the first comorbidity cluster.")
    male_effect: float | None = Field(None, ge=-4.0, le=4.0, description="Log hazard ratio of male sex.")
    base_hazard: float | None = Field(None, gt=0.0, le=0.01,
                                      description="Hazard per day at age 50 without risk factors.")

    def params(self) -> SyntheticParams:
        overrides = self.model_dump(exclude={"preset"}, exclude_none=True)
        return replace(PRESETS[self.preset], **overrides)


class CodesSpec(Section):
    """Which codes every model reads (ehrseq.data.codes): globs, or prefixes when they hold no wildcard."""

    include: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        [], max_length=1000, description="Codes kept (globs, or prefixes without a wildcard); `[]` keeps all.")
    exclude: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        [], max_length=1000, description="Codes dropped after `include`, e.g. `[LAB//]`.")


class AdmissionSpec(Section):
    """data.visit admission: the codes that open and close a hospital stay (ehrseq.data.visits), as data.codes
    patterns; the defaults are MEDS-Transforms' MIMIC-IV codes."""

    start: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        list(ADMISSION_START), min_length=1, max_length=100,
        description="Codes that open a stay (globs, or prefixes without a wildcard).")
    end: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        list(ADMISSION_END), min_length=1, max_length=100, description="Codes that close a stay.")


class DataSpec(Section):
    """Where the patients come from and how their events become tokens."""

    source: Literal["synthetic", "meds", "synthea-csv", "fhir"] = Field(
        "synthetic", description="synthetic: a seeded cohort with a planted outcome; meds: a MEDS dataset, read in "
        "place with its own splits; fhir: a folder of FHIR R4 bundles (Synthea); synthea-csv: a Synthea CSV export.")
    synthetic: SyntheticSpec = Field(SyntheticSpec(), description="synthetic only: the planted outcome's preset and "
                                     "effect sizes.")
    path: str | None = Field(None, description="The dataset folder (meds, synthea-csv, fhir).")
    num_patients: int = Field(2000, ge=10, le=MAX_COUNT, description="synthetic only: the cohort size, split "
                              "80/10/10 by patient.")
    max_seq_len: int = Field(128, ge=8, le=4096, description="Tokens per patient; the most recent visits before the "
                             "prediction time are kept. BEHRT small and medium take up to 2,048, large up to 4,096 "
                             "(meant for 512, 1,024 and 2,048: `ehrseq bench length`).")
    min_code_count: int = Field(5, ge=1, le=MAX_COUNT, description="Codes rarer than this in the train split become "
                                "`[UNK]` (count baselines drop them).")
    numeric_bins: int = Field(0, ge=0, le=100, description="Numeric values (labs) as tokens: N quantile bins per "
                              "code, fitted on the train split (`CODE//Q1` .. `CODE//QN`); 0: off; 1 is refused.")
    codes: CodesSpec = Field(CodesSpec(), description="Code globs every model reads alike, e.g. `{exclude: "
                             "[LAB//]}`; MEDS_BIRTH is always kept; part of the token cache's key; the summary counts "
                             "the events dropped.")
    visit: str = Field("day", max_length=20, description="What a visit is, for every model: day (a calendar day), "
                       "admission (a hospital stay, from `data.admission`'s codes; events outside stays by day) or "
                       "hours:N (fixed N-hour buckets); part of the token cache's key.")
    admission: AdmissionSpec = Field(AdmissionSpec(), description="data.visit admission only: the code patterns "
                                     "that open and close a stay.")

    @field_validator("visit")
    @classmethod
    def _visit(cls, value: str) -> str:
        VisitRule.parse(value)  # ValueError: what is allowed
        return value

    @field_validator("numeric_bins")
    @classmethod
    def _bins(cls, value: int) -> int:
        if value == 1:
            raise ValueError("one bin says nothing about a value: use 0 (off) or 2 or more (10: deciles)")
        return value

    def visit_rule(self) -> VisitRule:
        """data.visit (with data.admission's codes) as the rule every data path groups visits by."""
        return VisitRule.parse(self.visit, tuple(self.admission.start), tuple(self.admission.end))


class ModelSpec(Section):
    """Which model trains, and from what."""

    kind: Literal["behrt", "med2vec", "bag_of_codes", "cox", "gbm"] = Field(
        "behrt", description="behrt: BEHRT; med2vec: Med2Vec; the count baselines: bag_of_codes (L2 logistic "
        "regression on recency-weighted code counts), cox (penalised Cox proportional hazards), gbm (LightGBM on "
        "every per-code aggregate: the strong count baseline).")
    size: Literal["small", "medium", "large", "paper"] = Field(
        "small", description="BEHRT: small (~0.6M parameters at 1,000 codes), medium (~3M), large (~15M), paper (the "
        "original BEHRT: hidden 288, 6 layers, 12 heads, intermediate 512); Med2Vec: code and visit sizes 64, 128, "
        "256, 200.")
    init_from: str | None = Field(None, description="A run or checkpoint URI (`file://` or `s3://`) whose weights and "
                                  "vocabulary start the encoder of a fine-tune.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout probability.")
    age_feature: bool = Field(True, description="Count baselines: age at the prediction time as a feature (false: "
                              "see what the codes give without age).")
    init_from_data: Literal["same", "other"] = Field(
        "same", description="same: init_from must have been pretrained on this dataset and splits, reading no "
        "labelled patient's future (checked, exit 2 otherwise); other: it was pretrained elsewhere, on purpose (not "
        "checked, the summary says so).")
    positions: Literal["learned", "rope", "time"] = Field(
        "learned", description="BEHRT's visit positions: learned, the paper's absolute table; rope, rotary over the "
        "visit index inside attention; time, rotary over months since the first visit. Unset: rope for BEHRT "
        "small / medium / large (it finds an order across consecutive visits the learned table does not, see the "
        "results), learned for size paper and the other kinds. A fine-tune must match its pretraining "
        "(model.init_from).")
    freeze_encoder: bool = Field(False, description="A linear probe (as CLMBR is evaluated): the pretrained "
                                 "encoder (model.init_from) stays frozen and only a linear head on the mean of its "
                                 "token states trains.")

    @model_validator(mode="before")
    @classmethod
    def _default_positions(cls, data: Any) -> Any:
        if isinstance(data, dict) and "positions" not in data and data.get("kind", "behrt") == "behrt" \
                and data.get("size", "small") != "paper":
            return {**data, "positions": "rope"}
        return data


class TaskSpec(Section):
    """What the model learns to predict."""

    kind: Literal["mlm", "med2vec", "next_visit", "binary", "survival"] = Field(
        "mlm", description="mlm: BEHRT's masked-code pretraining; med2vec: Med2Vec's own pretraining (codes of a "
        "visit predict each other, a visit predicts the codes of its neighbours); next_visit (the codes of each "
        "patient's last visit, from the visits before it), binary, survival: supervised.")
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="mlm: share of code tokens masked (80% [MASK], 10% "
                             "random, 10% kept).")
    labels: str | None = Field(None, description="binary / survival: the label task under `<dataset>/labels/`, "
                               "or under labels_path; null: the synthetic cohort's planted outcome "
                               "(outcome_within_365d, outcome_survival). next_visit derives its targets from the "
                               "visits: leave it null.")
    labels_path: str | None = Field(None, min_length=1, max_length=4096, description="binary / survival: MEDS label "
                                    "parquet anywhere (e.g. ACES output): a file, a task's folder, or a folder of "
                                    "tasks, where labels names one (`<labels_path>/<labels>.parquet` or "
                                    "`<labels_path>/<labels>/**/*.parquet`).")
    horizon_days: float = Field(365.0, gt=0, le=36500, description="survival: the horizon of auroc_365d (and the "
                                "target of the bag_of_codes and gbm baselines).")
    pretrain_data: Literal["cut", "pool", "all"] = Field(
        "cut", description="mlm / med2vec: what pretraining reads of patients labelled in any `<dataset>/labels/` "
        "task or in labels_path: cut, their events strictly before their earliest prediction time; pool, nothing "
        "(unlabelled patients only); all, whole timelines (a fine-tune on this dataset refuses such a base).")

    @property
    def label_task(self) -> str | None:
        """The task's name among its labels: `labels`, else (inside the dataset) the default per kind; None
        when labels_path is the task's own file or folder."""
        if self.labels_path is not None:
            return self.labels
        return self.labels or DEFAULT_LABELS.get(self.kind, self.kind)

    @property
    def label_name(self) -> str:
        """The task's name in reports (MEDS-DEV's `task`): label_task, else labels_path's file or folder name."""
        return self.label_task or Path(self.labels_path or self.kind).name.removesuffix(".parquet")


class TrainSpec(Section):
    """How long and how it trains, and when it evaluates."""

    max_steps: int = Field(2000, ge=1, le=MAX_COUNT, description="Optimizer steps; with epochs, an upper bound. "
                           "Raising it continues a finished run.")
    batch_size: int = Field(32, ge=1, le=65536, description="Patients (examples) per step: the global batch, split "
                            "across grad_accum_steps and DDP processes.")
    lr: float = Field(3.0e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, le=10.0, description="AdamW weight decay.")
    warmup_steps: int | None = Field(None, ge=0, le=MAX_COUNT, description="Linear warm-up steps, then linear decay "
                                     "to 10% of the peak; null: 10% of the steps the run trains for.")
    grad_clip: float = Field(1.0, gt=0.0, le=1e6, description="Max global gradient norm.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto: cuda, else mps, else cpu. A GPU that torch cannot use is refused (exit 2), never "
        "silently replaced by the CPU.")
    log_every: int = Field(10, ge=1, le=MAX_COUNT, description="Steps per training record in `metrics.jsonl` (1: "
                           "every step).")
    eval_every: int = Field(500, ge=0, le=MAX_COUNT, description="Steps between tuning-split evaluations (0: only "
                            "at the end); evals_per_epoch replaces it.")
    eval_batch_size: int = Field(64, ge=1, le=65536, description="Patients per batch when evaluating (tuning and "
                                 "held-out).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA GPUs that have it, fp16 with a dynamic loss scale on older "
        "ones, fp32 on CPU and Apple MPS; fp32, bf16 or fp16 forces one. On CPU fp32 keeps resume bit-exact.")
    grad_accum_steps: int = Field(1, ge=1, le=65536, description="Micro-batches per optimizer step (must divide "
                                  "batch_size), for a batch that does not fit in memory at once; part of the run's "
                                  "identity.")
    compile: bool = Field(False, description="torch.compile the model: speed only, so not part of the fingerprint "
                          "(a resume may differ).")
    epochs: float | None = Field(None, gt=0, le=100000, description="Length in epochs: ceil(epochs x training "
                                 "examples / batch_size) steps, max_steps an upper bound; null: max_steps.")
    min_steps: int = Field(300, ge=0, le=MAX_COUNT, description="With epochs: at least this many steps (small k: 3 "
                           "epochs of 128 examples are 12); each epoch is then min_steps / epochs steps, and "
                           "evaluations and patience per epoch stretch with it; patience never stops a run before "
                           "min_steps; 0: no floor.")
    evals_per_epoch: int | None = Field(None, ge=1, le=10000, description="Tuning evaluations per epoch (rounded to "
                                        "whole steps); when set, replaces eval_every.")
    patience: int | None = Field(None, ge=1, le=MAX_COUNT, description="Stop after this many tuning evaluations in "
                                 "a row without improvement; null: never.")
    patience_epochs: float | None = Field(None, gt=0, le=100000, description="Patience in epochs (as stretched by "
                                          "min_steps), turned into evaluations (at least 1); set this or patience, "
                                          "not both.")
    label_budget: int | None = Field(None, ge=1, le=MAX_COUNT, description="k: train on a seeded, stratified k "
                                     "labelled training patients and make every choice on k tuning patients (the "
                                     "EHRSHOT k-shot protocol); null: all. Supervised tasks only.")
    replicate: int = Field(0, ge=0, le=MAX_COUNT, description="Picks the label-budget subsample, initialisation, "
                           "batch order, dropout and gbm seed; seed keeps the cohort and its splits.")

    @field_validator("patience_epochs")
    @classmethod
    def _one_patience(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("patience") is not None:
            raise ValueError(f"train.patience is {info.data['patience']} (evaluations) too: set one of the two")
        return value

    @field_validator("grad_accum_steps")
    @classmethod
    def _divides_batch(cls, k: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size")
        if batch is not None and batch % k:
            raise ValueError(f"must divide batch_size {batch} (each step's batch is split into that many parts)")
        return k


class CheckpointSpec(Section):
    """When checkpoints are committed, and how a stop is handled."""

    interval_seconds: float = Field(600, gt=0, le=7 * 86400, description="Wall-clock time between timed "
                                    "checkpoints (each new best tuning evaluation commits one too).")
    keep_last: int = Field(3, ge=1, le=1000, description="Committed checkpoints kept, besides the best.")
    grace_seconds: float = Field(5.0, gt=0, le=3600, description="After SIGTERM, the time to commit a final "
                                 "checkpoint (RunPod spot: 5 s to SIGKILL); one that cannot make it is abandoned.")
    local_dir: str | None = Field(None, description="A first tier on local disk (a spot pod's volume, e.g. "
                                  "`/workspace/ckpt`): each checkpoint is committed there, then uploaded.")
    lease_renew_seconds: float = Field(30.0, ge=0.1, le=MAX_RENEW_SECONDS, description="How often the run's lease is "
                                       "renewed; a writer silent for 4 renewals may be taken over.")


class StorageSpec(Section):
    """Where runs live: each run is the folder `<uri>/<run_id>/`."""

    uri: str = Field("file://./runs", description="`file://PATH` or `s3://BUCKET/PREFIX`; credentials only from "
                     "the AWS chain (`AWS_*` variables, a profile, an instance role), never in the URI.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (R2, B2, MinIO, RunPod); null: "
                                     "`AWS_ENDPOINT_URL`.")


class RuntimeSpec(Section):
    """The machine the run works on."""

    work_dir: str | None = Field(None, description="Fast local scratch for data, caches and checkpoints in the "
                                 "making; null: a temporary folder.")
    price_per_hour: float | None = Field(None, ge=0, le=10000, description="The pod's price in USD per hour, for "
                                         "cost in the summary, compare and ladder reports.")


class MlflowSpec(Section):
    """One MLflow run across every resume; credentials in `MLFLOW_TRACKING_USERNAME` / `_PASSWORD` / `_TOKEN`."""

    tracking_uri: str | None = Field(None, description="`http(s)://host:port` of an MLflow server; null: "
                                     "`MLFLOW_TRACKING_URI`.")
    experiment: str = Field("ehrseq", min_length=1, max_length=500, description="The MLflow experiment's name.")


class TrackingSpec(Section):
    """Live views of the run (runner/job/tracking.py): off by default; neither changes what trains."""

    tensorboard: bool = Field(False, description="Event files under the run folder's `tensorboard/`.")
    mlflow: MlflowSpec | None = Field(None, description="Log to an MLflow server; null: off.")


LoraTarget = Literal["query", "key", "value", "output", "up", "down"]  # BEHRT's Linear layers


class LoraSpec(Section):
    """Low-rank adapters (peft) on BEHRT's Linear layers, fine-tuning the model.init_from base, which stays frozen."""

    rank: int = Field(8, ge=1, le=4096, description="Adapter rank r.")
    alpha: float = Field(16, gt=0, le=1e6, description="The adapter update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    targets: list[LoraTarget] = Field(["query", "key", "value", "output"], min_length=1, description="BEHRT's Linear "
                                      "layers that get adapters: attention query, key, value, output; feed-forward "
                                      "up, down.")
    trained_in_full: list[Literal["head"]] = Field(["head"], description="Modules trained without adapters.")


class JobSpec(Section):
    """A job: one run, one YAML file (`ehrseq run SPEC`)."""

    name: str = Field(pattern=RUN_ID_PATTERN, description="The run id in storage: re-running the same name finds "
                      "the same run and resumes it.")
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN, description="Overrides name as the run id.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds the cohort, splits, initialisation, batch order and "
                      "masks (numpy seeds are 32-bit).")
    data: DataSpec = Field(DataSpec(), description="The dataset and its tokens.")
    model: ModelSpec = Field(ModelSpec(), description="The model.")
    task: TaskSpec = Field(TaskSpec(), description="What it predicts.")
    train: TrainSpec = Field(TrainSpec(), description="Training length, optimizer, evaluations.")
    checkpoint: CheckpointSpec = Field(CheckpointSpec(), description="Checkpoints and stopping.")
    storage: StorageSpec = Field(StorageSpec(), description="Where the run folder lives.")
    runtime: RuntimeSpec = Field(RuntimeSpec(), description="Local scratch and price.")
    lora: LoraSpec | None = Field(None, description="LoRA fine-tuning of the model.init_from base; null: full "
                                  "fine-tuning (or none).")
    tracking: TrackingSpec = Field(TrackingSpec(), description="Live views in TensorBoard and MLflow; not part of "
                                   "the fingerprint.")

    @property
    def resolved_run_id(self) -> str:
        return self.run_id or self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def fingerprint(self) -> str:
        """Hash of everything that decides the model and data (not storage, runtime, tracking, step budget or
        compile)."""
        d = self.model_dump(mode="json", exclude={"storage", "runtime", "checkpoint", "run_id", "tracking"})
        for key in ("max_steps", "compile"):  # compile changes speed, not the math
            d["train"].pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def load_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Reads, overrides and validates a spec; every failure is a one-line SpecError."""
    path = Path(path)
    raw = read_spec_file(path, overrides, "name, data, model, ...")
    if "rungs" in raw and "cohorts" in raw:
        raise SpecError(f"{path}: this is a ladder spec (it has rungs and cohorts), not a job spec: run it with "
                        f"`ehrseq ladder {path}`")
    return validate_job(raw, str(path))


def validate_job(raw: dict[str, Any], where: str, check: bool = True) -> JobSpec:
    """A JobSpec from a mapping; `check` also runs check_supported. Failures are one SpecError prefixed `where`."""
    try:
        spec = JobSpec.model_validate(raw)
        if check:
            check_supported(spec)
    except ValidationError as e:
        raise SpecError(f"{where}: {describe_errors(e)}") from None
    except InputError as e:
        raise SpecError(f"{where}: {e}") from None
    return spec


def read_spec_file(path: Path, overrides: list[str], sections: str) -> dict[str, Any]:
    """A spec file's YAML mapping with `--set` overrides applied (job specs and ladder specs alike)."""
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = safe_yaml.load(path.read_bytes(), str(path))
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec ({e.strerror or e})") from None
    except InputError as e:
        raise SpecError(str(e)) from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of sections ({sections}), got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item, path)
    return raw


def describe_errors(e: ValidationError) -> str:
    """A pydantic error as one line: each failing field by its dotted path, what is wrong, the value given."""
    return redact_credentials("; ".join(_describe(err) for err in e.errors()))  # the values given are echoed


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted field names: {"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_override(raw: dict[str, Any], item: str, path: Path) -> None:
    """`a.b=v`: v parsed as YAML (numbers, booleans, null), then type-checked with the whole spec."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set train.max_steps=100")
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    try:
        node[parts[-1]] = safe_yaml.load(value, "--set") if value else ""
    except InputError:
        node[parts[-1]] = value


def _describe(err: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{field}: unknown field (check the spelling; see `ehrseq validate --help`)"
    if err["type"] == "missing":
        return f"{field}: required field is missing"
    given = repr(err["input"])
    return f"{field}: {err['msg']} (got {given if len(given) <= 200 else given[:200] + '...'})"


def _check_visits(data: DataSpec) -> None:
    """data.admission only with admission visits, and never codes that data.codes drops (stays would vanish)."""
    if data.visit != "admission":
        if data.admission != AdmissionSpec():
            raise InputError(f"data.admission: sets the codes of a hospital stay, but data.visit is {data.visit!r}; "
                             "remove it or set data.visit: admission")
        return
    patterns = [*data.admission.start, *data.admission.end]
    dropped = [p for p, kept in zip(patterns, CodeFilter(tuple(data.codes.include), tuple(data.codes.exclude))
                                    .allows(patterns), strict=True) if not kept]
    if dropped:
        raise InputError(f"data.codes: drops the admission codes {', '.join(dropped)} (data.admission), so no stay "
                         "could be found; keep them in data.codes or choose another data.visit")


def _check_icu(spec: JobSpec) -> None:
    """The icu preset is another generator: none of the planted outcome's overrides apply, and its one task is
    READMISSION_TASK (binary)."""
    overrides = spec.data.synthetic.model_dump(exclude={"preset"}, exclude_none=True)
    if overrides:
        raise InputError(f"data.synthetic: the icu preset takes no overrides (got {', '.join(overrides)})")
    if spec.task.kind == "survival" or (spec.task.kind == "binary" and spec.task.labels_path is None
                                        and spec.task.labels != READMISSION_TASK):
        raise InputError(f"task.labels: the icu preset's task is binary, task.labels: {READMISSION_TASK} "
                         f"(got task.kind {spec.task.kind}, task.labels {spec.task.labels})")


def check_supported(spec: JobSpec) -> None:
    """What this version can run; valid-but-unsupported values fail here, before anything is written."""
    for field, url in (("storage.uri", spec.storage.uri), ("storage.endpoint_url", spec.storage.endpoint_url),
                       ("model.init_from", spec.model.init_from), ("task.labels_path", spec.task.labels_path),
                       ("data.path", spec.data.path)):
        refuse_credentials(url, field)  # first: later messages echo these URLs
    mlflow_uri = spec.tracking.mlflow and spec.tracking.mlflow.tracking_uri
    if mlflow_uri and "@" in urlsplit(mlflow_uri).netloc:
        raise InputError("tracking.mlflow.tracking_uri: the URL holds credentials (user:password@host); set "
                         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
    unsupported = [("model.kind", spec.model.kind, {"behrt", "med2vec", *BASELINES}),
                   ("task.kind", spec.task.kind, {"mlm", "med2vec", *SUPERVISED}),
                   ("data.source", spec.data.source, {"synthetic", "meds", "fhir", "synthea-csv"})]
    for field, value, ok in unsupported:
        if value not in ok:
            raise InputError(f"{field}: {value!r} is not supported yet; supported: {', '.join(sorted(ok))}")
    if spec.data.source != "synthetic" and spec.data.synthetic != SyntheticSpec():
        raise InputError(f"data.synthetic: sets the synthetic generator, but data.source is {spec.data.source!r}; "
                         "remove it or use data.source synthetic")
    if spec.data.source == "synthetic" and spec.data.synthetic.preset == "icu":
        _check_icu(spec)
    _check_visits(spec.data)
    if spec.task.kind == "mlm" and spec.model.kind != "behrt":
        raise InputError(f"task.kind: mlm needs model.kind behrt (got {spec.model.kind!r}); "
                         "Med2Vec pretrains with task.kind med2vec")
    if spec.task.kind == "med2vec" and spec.model.kind != "med2vec":
        raise InputError(f"task.kind: med2vec is Med2Vec's pretraining objective; it needs model.kind med2vec "
                         f"(got {spec.model.kind!r})")
    if spec.task.kind == "next_visit" and spec.model.kind in BASELINES:
        raise InputError(f"model.kind: {spec.model.kind} cannot predict a next visit's codes (one score per "
                         "subject); use model.kind behrt with task.kind next_visit")
    if spec.task.kind == "next_visit" and spec.task.labels:
        raise InputError(f"task.labels: {spec.task.labels!r} is not used by next_visit, whose targets come from "
                         "each subject's last visit; leave it null")
    if spec.task.labels_path is not None and spec.task.kind not in ("binary", "survival", "mlm", "med2vec"):
        raise InputError(f"task.labels_path: labels are read for task.kind binary or survival (and cut mlm or "
                         f"med2vec pretraining); task.kind {spec.task.kind!r} takes none")
    if spec.task.pretrain_data != "cut" and spec.task.kind not in ("mlm", "med2vec"):
        raise InputError(f"task.pretrain_data: {spec.task.pretrain_data} sets what mlm or med2vec pretraining reads; "
                         f"task.kind {spec.task.kind!r} is not a pretraining")
    if spec.train.label_budget is not None and spec.task.kind not in SUPERVISED:
        raise InputError(f"train.label_budget: {spec.train.label_budget} subsamples labelled training examples; "
                         f"task.kind {spec.task.kind!r} has no labels (pretraining uses every training patient)")
    if not spec.model.age_feature and spec.model.kind not in BASELINES:
        raise InputError(f"model.age_feature: false drops the age column of the count baselines "
                         f"({', '.join(BASELINES)}); model.kind {spec.model.kind!r} reads age from its tokens")
    if spec.model.positions != "learned" and spec.model.kind != "behrt":
        raise InputError(f"model.positions: {spec.model.positions!r} sets BEHRT's visit positions; model.kind "
                         f"{spec.model.kind!r} has none (leave it learned)")
    most = SEQ_LENS[spec.model.size][1]
    if spec.model.kind == "behrt" and spec.data.max_seq_len > most:
        larger = next((f"; model.size {size} takes up to {n:,}" for size, (_, n) in SEQ_LENS.items()
                       if n >= spec.data.max_seq_len), "")
        raise InputError(f"data.max_seq_len: {spec.data.max_seq_len:,} tokens is more than BEHRT {spec.model.size} is "
                         f"sized for ({most:,}){larger}")
    if spec.model.kind == "cox" and spec.task.kind != "survival":
        raise InputError("model.kind: cox needs event times; use it with task.kind survival (a binary label has "
                         "no time to fit); for a binary task use bag_of_codes")
    if spec.model.freeze_encoder and (not spec.model.init_from or spec.lora):
        raise InputError("model.freeze_encoder: true trains a linear head on a frozen pretrained encoder; set "
                         "model.init_from to a pretraining run's URI" + (" and remove lora (it trains adapters "
                                                                        "in the encoder)" if spec.lora else ""))
    if spec.lora and (spec.model.kind != "behrt" or not spec.model.init_from):
        raise InputError("lora: LoRA adapts a pretrained BEHRT; set model.kind behrt and model.init_from to a "
                         "pretraining run's URI")
    if spec.model.init_from:
        if spec.model.kind not in ("behrt", "med2vec") or spec.task.kind not in SUPERVISED:
            raise InputError("model.init_from: fine-tuning starts BEHRT or Med2Vec on a supervised task "
                             f"({', '.join(SUPERVISED)}) from its pretraining run; got model.kind "
                             f"{spec.model.kind!r}, task.kind {spec.task.kind!r}")
        open_storage(split_run_uri(spec.model.init_from)[0])  # validates the URI
    open_storage(spec.storage.uri)  # validates the URI scheme
