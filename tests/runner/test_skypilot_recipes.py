"""The SkyPilot recipes under deploy/skypilot, read by SkyPilot itself: command, resources, env names, recovery.

SkyPilot pins click<8.2, which transformers' huggingface_hub 2.x refuses, so it lives in its own venv:
`.ci/run` installs it there and runs this file with --noconftest (it imports nothing from ehrseq).
Recovery is decided by SkyPilot's own strategy executor: exit 75 (preempted, checkpoint committed) relaunches,
exit 2 (bad input) and exit 1 do not.
"""

import asyncio
import re
from pathlib import Path

import pytest
import yaml

sky = pytest.importorskip("sky", reason="skypilot lives in its own venv (see .ci/run)")

RECIPES = Path(__file__).resolve().parents[2] / "deploy" / "skypilot"
COMMANDS = {"job.yaml": ("run", "JOB"), "ladder.yaml": ("ladder", "LADDER")}  # ehrseq command, its spec's env
BUCKET = [("STORAGE_URI", "s3://my-bucket/runs")]
DOCKERFILE_TORCH_SPEC = re.search(r'^ARG TORCH_SPEC="([^"]+)"$', (RECIPES.parents[1] / "Dockerfile").read_text(),
                                  re.MULTILINE).group(1)


def load(name: str, **overrides):
    return sky.Task.from_yaml_config(yaml.safe_load((RECIPES / name).read_text()), env_overrides=BUCKET, **overrides)


def test_every_recipe_is_checked():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_bucket_must_be_given(name):
    with pytest.raises(ValueError, match="STORAGE_URI"):
        sky.Task.from_yaml(str(RECIPES / name))  # as `sky jobs launch` without --env STORAGE_URI=...


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_resources_and_env_names(name):
    task, (command, spec) = load(name), COMMANDS[name]
    assert f'exec ~/ehrseq-venv/bin/ehrseq {command} "${spec}" --set storage.uri="$STORAGE_URI"' in task.run
    # torch first from TORCH_SPEC, then the project with that torch pinned (as the Dockerfile does)
    first, pinned = 'pip install --quiet "$TORCH_SPEC"', "pip install --quiet -c ~/torch.txt ."
    assert first in task.setup and pinned in task.setup and task.setup.index(first) < task.setup.index(pinned)
    assert task.workdir == "."
    assert set(task.envs) == {spec, "STORAGE_URI", "AWS_ENDPOINT_URL", "TORCH_SPEC"}
    assert task.envs["STORAGE_URI"] == "s3://my-bucket/runs" and task.envs["AWS_ENDPOINT_URL"] == ""
    assert task.envs["TORCH_SPEC"] == DOCKERFILE_TORCH_SPEC  # the image's CUDA build, so one RunPod filter fits both
    # credentials are secrets with no value in the file: supplied at launch with --secret NAME
    assert {ref.name for ref in task.managed_secret_refs} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert not task.file_mounts and not task.storage_mounts  # the bucket is ehrseq's, not a mount
    resources = list(task.resources)
    assert sorted(next(iter(r.accelerators)) for r in resources) == ["A40", "H100"]
    for r in resources:
        assert str(r.cloud) == "RunPod" and r.use_spot and r.accelerators in ({"A40": 1}, {"H100": 1})
        assert r.job_recovery == {"strategy": "FAILOVER", "max_restarts_on_errors": 0, "recover_on_exit_codes": [75]}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_secrets_given_at_launch_are_kept_secret(name):
    task = load(name, secrets_overrides=[("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")])
    assert set(task.secrets) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "s3cr3t" not in repr(task.secrets) and "s3cr3t" not in str(task.envs)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_skypilot_relaunches_after_exit_75_and_not_after_bad_input(name):
    from sky.backends import CloudVmRayBackend
    from sky.jobs.recovery_strategy import StrategyExecutor

    def executor():
        return StrategyExecutor.make("ehrseq", CloudVmRayBackend(), load(name), job_id=1, task_id=0, pool=None,
                                     starting=set(), starting_lock=asyncio.Lock(),
                                     starting_signal=asyncio.Condition())

    preempted = executor()
    assert all(preempted.should_restart_on_failure([75]) for _ in range(5))  # every preemption, no limit
    assert not executor().should_restart_on_failure([2])  # bad spec: rerunning cannot fix it
    assert not executor().should_restart_on_failure([1])
