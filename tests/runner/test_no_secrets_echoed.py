"""Issue 28 item 5: a password typed into a spec or --set is never printed, whatever the error path."""

from __future__ import annotations

import pytest

from ehrseq_runner.spec.job_spec import SpecError, load_spec
from ehrseq_runner.spec.ladder_spec import load_ladder
from ehrseq_runner.storage.uri import redact_credentials

from support.helpers import SMALL_SPEC, run_cli

SECRET = "s3cr3tPW"
OVERRIDES = [f"storage=s3://KEY:{SECRET}@b/x", f"storage.endpoint_url=[http://a:{SECRET}@h]",
             f"model.init_from={{u: s3://a:{SECRET}@b/r}}", f"task.labels_path=http://u:{SECRET}@h/x",
             f"data.path=s3://u:{SECRET}@b/d", f"storage.uri=s3://KEY:{SECRET}@b/x"]


@pytest.mark.parametrize("override", OVERRIDES)
def test_spec_errors_never_echo_a_password(override):
    with pytest.raises(SpecError) as refused:
        load_spec(SMALL_SPEC, ["task.kind=binary", override])
    assert SECRET not in str(refused.value), str(refused.value)


def test_ladder_errors_never_echo_a_password(tmp_path):
    path = tmp_path / "ladder.yaml"
    path.write_text(f"""name: lad
cohorts: [{{name: c, data: {{num_patients: 100}}}}]
task: {{kind: binary}}
rungs: [{{name: bag, model: {{kind: bag_of_codes}}}}]
storage: "s3://KEY:{SECRET}@bucket/x"
""")
    with pytest.raises(SpecError) as refused:
        load_ladder(path)
    assert SECRET not in str(refused.value) and "***@bucket" in str(refused.value), str(refused.value)


def test_redaction_keeps_the_rest_of_the_message():
    assert redact_credentials(f"got 's3://K:{SECRET}@b/x' and ['http://a:{SECRET}@h'], a@b.com, 12:30 @ noon") \
        == "got 's3://***@b/x' and ['http://***@h'], a@b.com, 12:30 @ noon"


@pytest.mark.slow
def test_the_cli_never_prints_a_password(tmp_path):
    for args in (["validate", str(SMALL_SPEC), "--set", f"s3://KEY:{SECRET}@b/x"],  # not FIELD=VALUE: echoed
                 ["validate", str(SMALL_SPEC), "--set", "task.kind=binary", "--set", OVERRIDES[3]],
                 ["run", str(SMALL_SPEC), "--set", OVERRIDES[0]]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and SECRET not in result.stdout + result.stderr, result.stderr
        assert "Traceback" not in result.stderr
