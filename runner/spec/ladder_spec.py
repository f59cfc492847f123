"""The ladder spec: rungs x cohorts x label budgets x replicates, each an ordinary job spec.

A ladder YAML names its cohorts (any `data` block a job spec takes), one supervised task, the rungs (a model
block, an optional pretraining run, LoRA, train overrides), the label budgets and the replicates. `expand`
turns it into the JobSpecs to run, in order: each cohort's pretraining runs (one per distinct pretraining, on
the training patients without labels, each labelled patient cut before its prediction time or, with
`pretrain.data: pool`, left out), then every rung at every budget and replicate, fine-tuned from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ehrseq.errors import InputError
from ehrseq.reports.ladder import COUNT_KINDS, budget_text
from ehrseq_runner.spec.job_spec import (
    CheckpointSpec,
    DataSpec,
    JobSpec,
    LoraSpec,
    ModelSpec,
    RuntimeSpec,
    Section,
    SpecError,
    StorageSpec,
    TaskSpec,
    TrackingSpec,
    TrainSpec,
    describe_errors,
    read_spec_file,
    validate_job,
)

MAX_RUNS = 10_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"  # short: run ids are <ladder>-<cohort>-<rung>-k<k>-r<r>
LADDER_TASKS = ("binary", "survival")
SET_BY_LADDER = ("label_budget", "replicate")  # train fields each run gets from label_budgets / replicates


class Cohort(Section):
    """One dataset every rung runs on."""

    name: str = Field(pattern=NAME_PATTERN, description="Part of every run id of the cohort.")
    data: DataSpec = Field(DataSpec(), description="A job spec's data block (synthetic with synthetic.preset, meds "
                           "with labels, fhir, synthea-csv).")
    task: dict[str, Any] = Field({}, description="Overrides of the ladder's task for this cohort, e.g. `{labels: "
                                 "my_outcome}`; never its kind.")

    @field_validator("task")
    @classmethod
    def _same_kind(cls, task: dict[str, Any]) -> dict[str, Any]:
        if "kind" in task:
            raise ValueError(f"every cohort has the ladder's task.kind; remove kind: {task['kind']!r} here")
        return task


class Pretrain(Section):
    """A rung's pretraining: run once per cohort, on the training patients without labels; rungs with identical
    pretraining share one."""

    task: Literal["mlm", "med2vec"] = Field(description="mlm for BEHRT, med2vec for Med2Vec.")
    data: Literal["cut", "pool"] = Field(
        "cut", description="What it reads of the labelled patients (the ladder's labels and every task under the "
        "dataset's `labels/`): cut, their events strictly before their earliest prediction time; pool, nothing "
        "(unlabelled patients only).")
    train: TrainSpec = Field(TrainSpec(), description="Overrides of the ladder's train block for the pretraining run "
                             "(not the rung's).")


class Tuning(Section):
    """The settings every trained rung tries at each budget and replicate; the one with the best tuning-split
    figure is reported (gbm tries its own 2 settings, bag-of-codes its C grid, both on the same tuning split)."""

    lr_scale: list[float] = Field([1.0], min_length=1, max_length=4, description="Factors, each multiplying the "
                                  "run's train.lr: one setting per factor (times each length_scale).")
    length_scale: list[float] = Field([1.0], min_length=1, max_length=4, description="Factors, each multiplying "
                                      "the run's train.epochs (else max_steps) and min_steps.")

    @field_validator("lr_scale", "length_scale")
    @classmethod
    def _positive_and_distinct(cls, scales: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"distinct factors in (0, 100]; got {scales}")
        return scales

    def settings(self) -> list[tuple[float, float]]:
        """(lr factor, length factor) of each setting, in run-id order (s0, s1, ...)."""
        return [(lr, length) for lr in self.lr_scale for length in self.length_scale]


class Rung(Section):
    """One model of the ladder, run at every label budget and replicate."""

    name: str = Field(pattern=NAME_PATTERN, description="Part of the rung's run ids.")
    model: ModelSpec = Field(description="A job spec's model block.")
    pretrain: Pretrain | None = Field(None, description="Pretraining run once per cohort; every budget and "
                                      "replicate fine-tunes from it (or model.init_from starts from an existing "
                                      "run: set one of the two).")
    lora: LoraSpec | None = Field(None, description="LoRA as in a job spec.")
    train: TrainSpec = Field(TrainSpec(), description="Overrides of the ladder's train block for this rung's "
                             "supervised runs.")

    @model_validator(mode="after")
    def _one_base(self) -> Rung:
        if self.pretrain and self.model.init_from:
            raise ValueError("set either pretrain (the ladder pretrains on each cohort) or model.init_from "
                             f"(an existing run), not both; got init_from {self.model.init_from!r}")
        return self


class LadderSpec(Section):
    """A ladder: rungs x cohorts x label budgets x replicates, one YAML file (`ehrseq ladder LADDER.yaml`)."""

    name: str = Field(pattern=NAME_PATTERN, description="Prefix of every run id, "
                      "`<name>-<cohort>-<rung>-k<k>-r<replicate>` (`kall`: all labels; `-s<i>` added for each "
                      "tuning setting when there are several), and of the report folder `ladder-<name>`.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds the cohort, splits and pretraining; replicates vary "
                      "the subsample and initialisation.")
    cohorts: list[Cohort] = Field(min_length=1, description="The datasets, names unique; every rung runs on every "
                                  "cohort.")
    task: TaskSpec = Field(description="A job spec's task block, binary (judged by AUROC) or survival (C-index); "
                           "cohorts may override its other fields (labels, horizon_days).")
    rungs: list[Rung] = Field(min_length=1, description="The models, names unique, count baselines among them: "
                              "the verdicts are against the best count baseline at each budget.")
    label_budgets: list[int | None] = Field([None], min_length=1, description="The k's, each at least 1 and none "
                                            "repeated, e.g. `[64, 256, null]` (null: all); each run gets "
                                            "train.label_budget: k training and k tuning patients.")
    replicates: int = Field(5, ge=1, le=100, description="Runs per rung at each budget below all, each with its own "
                            "train.replicate (subsample, initialisation, batch order, gbm seed).")
    replicates_at_all: int | None = Field(None, ge=1, le=100, description="Runs per rung with all labels "
                                          "(initialisation only); null: replicates.")
    tuning: Tuning = Field(Tuning(), description="The settings every trained rung (BEHRT, Med2Vec) tries at each "
                           "budget and replicate, e.g. `{lr_scale: [1.0, 0.3]}`; the report keeps the one with the "
                           "best tuning-split figure, as gbm keeps the best of its 2 settings. Default: one setting.")
    resamples: int = Field(2000, ge=100, le=100_000, description="Paired bootstrap resamples in the report (adjusted "
                           "intervals reach into the tails: 1 - 0.05 / comparisons).")
    train: TrainSpec = Field(TrainSpec(), description="Defaults for every run; a rung's or a pretraining's train "
                             "overrides them. label_budget and replicate come from the ladder.")
    checkpoint: CheckpointSpec = Field(CheckpointSpec(), description="A job spec's checkpoint block, for every run.")
    storage: StorageSpec = Field(StorageSpec(), description="A job spec's storage block: every run is its own folder "
                                 "there.")
    runtime: RuntimeSpec = Field(RuntimeSpec(), description="A job spec's runtime block, for every run.")
    tracking: TrackingSpec = Field(TrackingSpec(), description="Every run's tracking; with mlflow, the report is a "
                                   "parent run of them all.")

    @field_validator("task")
    @classmethod
    def _supervised(cls, task: TaskSpec) -> TaskSpec:
        if task.kind not in LADDER_TASKS:
            raise ValueError(f"a ladder compares models on {' or '.join(LADDER_TASKS)}, not {task.kind!r}")
        return task

    @field_validator("label_budgets")
    @classmethod
    def _budgets(cls, budgets: list[int | None]) -> list[int | None]:
        bad = [k for k in budgets if k is not None and k < 1]
        if bad:
            raise ValueError(f"each budget is a number of labelled training patients >= 1, or null for all; got {bad}")
        if len(set(budgets)) != len(budgets):
            raise ValueError(f"budgets repeat: {budgets}")
        return budgets

    @field_validator("cohorts", "rungs")
    @classmethod
    def _unique_names(cls, items: list[Cohort] | list[Rung]) -> list[Cohort] | list[Rung]:
        names = [i.name for i in items]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names must be unique; repeated: {', '.join(repeated)}")
        return items

    @field_validator("train")
    @classmethod
    def _not_set_by_hand(cls, train: TrainSpec) -> TrainSpec:
        given = sorted(set(SET_BY_LADDER) & train.model_fields_set)
        if given:
            raise ValueError(f"{', '.join(given)} come from label_budgets and replicates; remove them here")
        return train


@dataclass(frozen=True)
class LadderRun:
    """One run of the ladder: a pretraining (budget None, replicate None) or a rung at a budget and replicate."""

    spec: JobSpec
    cohort: str
    rung: str  # a pretraining run carries the first rung that asked for it
    budget: int | None
    replicate: int | None
    setting: str | None = None  # the tuning setting of a trained rung when the ladder tries several, e.g. "lr x0.3"

    @property
    def pretraining(self) -> bool:
        return self.replicate is None

    @property
    def uri(self) -> str:
        return f"{self.spec.storage.uri.rstrip('/')}/{self.spec.resolved_run_id}"


def load_ladder(path: str | Path, overrides: list[str] = ()) -> tuple[LadderSpec, list[LadderRun]]:
    """Reads, overrides and validates a ladder and every run it expands to; each failure is a one-line SpecError."""
    path = Path(path)
    raw = read_spec_file(path, overrides, "name, cohorts, task, rungs, label_budgets, ...")
    try:
        ladder = LadderSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{path}: {describe_errors(e)}") from None
    try:
        return ladder, expand(ladder)
    except InputError as e:
        raise SpecError(f"{path}: {e}") from None


def expand(ladder: LadderSpec) -> list[LadderRun]:
    """Every run in order; InputError naming the cohort and rung when one of them is not a valid job."""
    total = len(ladder.cohorts) * len(ladder.rungs) * len(ladder.label_budgets) * ladder.replicates \
        * len(ladder.tuning.settings())
    if total > MAX_RUNS:  # refused at once: expanding it would take minutes before saying anything
        raise InputError(f"cohorts x rungs x label_budgets x replicates is {total:,} runs, more than {MAX_RUNS:,}; "
                         "split the ladder")
    runs: list[LadderRun] = []
    for cohort in ladder.cohorts:
        pretrained: dict[str, LadderRun] = {}  # pretraining fingerprint -> its run, shared by identical rungs
        base_of: dict[str, str] = {}  # rung -> URI its fine-tuning starts from
        for rung in ladder.rungs:
            if rung.pretrain is None:
                continue
            run = _pretraining(ladder, cohort, rung)
            run = pretrained.setdefault(run.spec.model_copy(update={"name": ladder.name}).fingerprint(), run)
            base_of[rung.name] = run.uri
        runs += pretrained.values()
        for budget in ladder.label_budgets:
            for replicate in range(ladder.replicates if budget is not None else
                                   ladder.replicates_at_all or ladder.replicates):
                for rung in ladder.rungs:
                    model = rung.model.model_dump(exclude_unset=True)
                    if rung.name in base_of:
                        model["init_from"] = base_of[rung.name]
                    run_id = f"{ladder.name}-{cohort.name}-{rung.name}-k{budget_text(budget)}-r{replicate}"
                    train = _train(ladder.train, rung.train, label_budget=budget, replicate=replicate)
                    for i, (setting, scaled) in enumerate(_settings(ladder.tuning, rung.model.kind, train)):
                        spec = _job(ladder, cohort, rung.name, run_id + (f"-s{i}" if setting else ""), model,
                                    ladder.task.model_dump(exclude_unset=True) | cohort.task, scaled,
                                    lora=rung.lora.model_dump() if rung.lora else None,
                                    check=budget == ladder.label_budgets[0] and replicate == 0 and i == 0)
                        runs.append(LadderRun(spec, cohort.name, rung.name, budget, replicate, setting))
    return runs


def _settings(tuning: Tuning, kind: str, train: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(name, train block) of each setting a rung tries: one unnamed setting for a count baseline (it tunes
    itself) or when the ladder tries only one."""
    if kind in COUNT_KINDS or len(tuning.settings()) == 1:
        return [(None, train)]
    base = TrainSpec.model_validate(train)
    out = []
    for lr, length in tuning.settings():
        scaled = train | {"lr": base.lr * lr, "min_steps": round(base.min_steps * length)}
        if base.epochs is not None:
            scaled["epochs"] = base.epochs * length
        else:
            scaled["max_steps"] = max(1, round(base.max_steps * length))
        out.append((f"lr x{lr:g}, length x{length:g}", scaled))
    return out


def _pretraining(ladder: LadderSpec, cohort: Cohort, rung: Rung) -> LadderRun:
    assert rung.pretrain is not None
    model = rung.model.model_dump(exclude_unset=True)
    model.pop("freeze_encoder", None)  # how the fine-tune uses the encoder: a probe shares a full fine-tune's base
    task = ladder.task.model_dump(exclude_unset=True) | cohort.task  # its labels are what the cut is made at
    labels = {k: task[k] for k in ("labels", "labels_path") if task.get(k) is not None}
    spec = _job(ladder, cohort, rung.name, f"{ladder.name}-{cohort.name}-{rung.name}-pretrain", model,
                {"kind": rung.pretrain.task, "pretrain_data": rung.pretrain.data, **labels},
                _train(ladder.train, rung.pretrain.train))
    return LadderRun(spec, cohort.name, rung.name, None, None)


def _train(*layers: TrainSpec, **set_by_ladder: Any) -> dict[str, Any]:
    """The fields each layer sets, later layers winning, then what the ladder decides for this run."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged |= layer.model_dump(exclude_unset=True)
    return merged | set_by_ladder


def _job(ladder: LadderSpec, cohort: Cohort, rung: str, run_id: str, model: dict[str, Any], task: dict[str, Any],
         train: dict[str, Any], check: bool = True, **extra: Any) -> JobSpec:
    """The run's JobSpec; `check` also runs check_supported, whose answer does not depend on the budget or
    replicate, so the ladder checks each cohort x rung once (it opens the storage: slow on S3 x 100 runs)."""
    raw = {"name": run_id, "seed": ladder.seed, "data": cohort.data.model_dump(exclude_unset=True),
           "model": model, "task": task, "train": train,
           **{k: getattr(ladder, k).model_dump(exclude_unset=True) for k in ("checkpoint", "storage", "runtime",
                                                                            "tracking")},
           **extra}
    return validate_job(raw, f"cohort {cohort.name}, rung {rung} ({run_id})", check)
