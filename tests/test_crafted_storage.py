"""Issue 28 items 4c, 6, 7: crafted or damaged storage (token-cache manifests, status.json, lease.json) and a full
disk end in one line naming the path and what to do, exit 2 (a skipped entry with a warning in `list`), never a
traceback and never a `failed` mark on a completed run."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import load_spec
from ehrseq_runner.storage.token_caches import PREFIX

from conftest import SMALL_SPEC

TINY = ["data.num_patients=100", "data.max_seq_len=24", "train.batch_size=8", "train.max_steps=2",
        "train.eval_every=0"]


def spec_for(tmp_path, name: str, pod: str, *extra: str):
    return load_spec(SMALL_SPEC, [*TINY, f"name={name}", f"storage.uri=file://{tmp_path}/runs",
                                  f"runtime.work_dir={tmp_path}/{pod}", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["none", "all but codes.npy"])
def test_a_stored_token_cache_whose_manifest_leaves_files_out_is_rebuilt(tmp_path, capsys, keep):
    assert run_job(spec_for(tmp_path, "a", "pod1"), Console(quiet=True)) == 0
    (stored,) = (tmp_path / "runs" / PREFIX).iterdir()
    manifest = json.loads((stored / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if keep != "none" and k != "codes.npy"}
    (stored / "manifest.json").write_text(json.dumps(manifest))
    (stored / "codes.npy").write_bytes(b"garbage, checked by nothing the manifest lists")
    assert run_job(spec_for(tmp_path, "b", "pod2"), Console(stderr=True, width=400)) == 0
    err = capsys.readouterr().err
    assert "does not list" in err and "codes.npy" in err and "Traceback" not in err, err
