import pytest
import yaml

from ehrseq_runner.spec.job_spec import JobSpec, SpecError, load_spec

from support.helpers import SMALL_SPEC


def test_every_shipped_job_spec_validates():
    for path in sorted(p for p in SMALL_SPEC.parent.glob("*.yaml") if not p.name.startswith("ladder_")):
        spec = load_spec(path)
        assert spec.resolved_run_id == spec.name
        assert path.read_text().startswith(f"# ehrseq run jobs/{path.name}")


def test_a_ladder_spec_given_to_run_says_to_use_ladder(cli):
    result = cli("validate", str(SMALL_SPEC.parent / "ladder_tiny.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "this is a ladder spec" in result.stderr and "ehrseq ladder" in result.stderr


def test_overrides_are_type_checked_and_applied():
    spec = load_spec(SMALL_SPEC, ["train.max_steps=7", "train.lr=1e-3", "data.source=meds", "data.path=/d"])
    assert spec.train.max_steps == 7 and spec.train.lr == pytest.approx(1e-3)
    assert spec.data.source == "meds" and spec.data.path == "/d"
    with pytest.raises(SpecError, match="set model.kind behrt and model.init_from"):  # null section filled in
        load_spec(SMALL_SPEC, ["lora.rank=4"])
    with pytest.raises(SpecError, match=r"train\.max_steps"):
        load_spec(SMALL_SPEC, ["train.max_steps=many"])
    with pytest.raises(SpecError, match="FIELD=VALUE"):
        load_spec(SMALL_SPEC, ["train.max_steps"])


def test_resolved_spec_round_trips():
    spec = load_spec(SMALL_SPEC)
    assert JobSpec.model_validate(yaml.safe_load(spec.to_yaml())) == spec


def test_fingerprint_ignores_storage_and_step_budget_but_not_model():
    base = load_spec(SMALL_SPEC)
    assert load_spec(SMALL_SPEC, ["storage.uri=file:///elsewhere", "train.max_steps=9"]).fingerprint() \
        == base.fingerprint()
    assert load_spec(SMALL_SPEC, ["model.size=large"]).fingerprint() != base.fingerprint()


BAD = {
    "unknown key": ("train:\n  max_step: 10\n", "train.max_step: unknown field"),
    "wrong type": ("train:\n  batch_size: lots\n", "train.batch_size"),
    "out of range": ("train:\n  lr: -1\n", "train.lr: Input should be greater than 0"),
    "bad enum": ("model:\n  kind: gpt\n", "model.kind"),
    "yaml syntax": ("train: [unclosed\n", "YAML syntax error"),
    "not a mapping": ("- a\n- b\n", "expected a mapping"),
    "lora without a base": ("lora:\n  rank: 4\n", "lora: LoRA adapts a pretrained BEHRT"),
    "cox on binary": ("model:\n  kind: cox\ntask:\n  kind: binary\n", "model.kind: cox needs event times"),
    "mlm baseline": ("model:\n  kind: bag_of_codes\n", "task.kind: mlm needs model.kind behrt"),
    "bad visit": ("data:\n  visit: week\n", "data.visit: Value error, 'week' is not a visit definition; use day, "
                  "admission or hours:N"),
    "stays dropped": ("data:\n  visit: admission\n  codes: {include: [LAB//]}\n",
                      "data.codes: drops the admission codes HOSPITAL_ADMISSION, HOSPITAL_DISCHARGE"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_exits_2_with_one_clear_line(case, cli, tmp_path):
    body, expected = BAD[case]
    spec = tmp_path / "bad.yaml"
    spec.write_text(("name: bad-job\n" if "mapping" not in case else "") + body)
    for command in ("validate", "run"):
        result = cli(command, str(spec))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "bad.yaml" in lines[0] and expected in lines[0], result.stderr
        assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_missing_spec_file_and_bad_override(cli):
    result = cli("validate", "nope.yaml")
    assert result.returncode == 2 and "nope.yaml: no such spec file" in result.stderr
    result = cli("run", str(SMALL_SPEC), "--set", "train.lr=-1")
    assert result.returncode == 2 and "train.lr" in result.stderr and "Traceback" not in result.stderr


def test_validate_prints_the_resolved_spec(cli):
    result = cli("validate", str(SMALL_SPEC), "--set", "train.max_steps=5")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["max_steps"] == 5
    assert resolved["checkpoint"]["grace_seconds"] == 5  # defaults filled in
