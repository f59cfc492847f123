"""Issue 19: a hostile bucket writes nothing outside its folder; bad specs and values exit 2 with one line."""

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from ehrseq.errors import InputError
from ehrseq_runner.checkpoints.store import MANIFEST, CheckpointStore, checkpoint_dir, sha256_file
from ehrseq_runner.job.run import run_job
from ehrseq_runner.spec.job_spec import load_spec
from ehrseq_runner.storage.run_folder import RunFolder
from ehrseq_runner.storage.safe_paths import check_name, inside
from ehrseq_runner.storage.uri import open_storage, split_run_uri

from support.helpers import SMALL_SPEC


@pytest.mark.parametrize("name", ["/etc/x", "../x", "a/../../x", "a//b", "./x", "", "a\\..\\x", "x\0", 3, None])
def test_only_plain_relative_names_pass(tmp_path, name):
    with pytest.raises(InputError, match="refusing"):
        inside(tmp_path, name)


def test_plain_names_pass_and_symlinks_out_are_caught(tmp_path):
    assert check_name("plots/loss.png") == "plots/loss.png"
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "plots").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="outside"):
        inside(tmp_path / "dest", "plots/loss.png")


def files_outside(root, dest):
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(dest))


def plant_evil_checkpoint(root, run, step, names):
    """A manifest naming files outside the checkpoint folder, with those files present where an unchecked
    download would read them (`root`/key), so it really would have written them."""
    entries = {}
    for name in names:
        source = root / f"{run.key(checkpoint_dir(step))}/{name}"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(b"#!/bin/sh\necho PWNED\n")
        entries[name] = {"size": 20, "sha256": "0" * 64}
    run.put_text(f"{checkpoint_dir(step)}/{MANIFEST}", json.dumps({"step": step, "files": entries}))


def committed_run(storage, tmp_path):
    run = RunFolder(storage, "r")
    good = tmp_path / "good.bin"
    good.write_bytes(b"weights")
    CheckpointStore(run).commit(1, [good], {})
    return run, good


def test_resume_skips_a_manifest_that_names_files_outside_its_folder(tmp_path):
    storage = open_storage(f"file://{tmp_path}/bucket")
    run, good = committed_run(storage, tmp_path)
    target = tmp_path / "outside" / "PWNED"
    plant_evil_checkpoint(tmp_path / "bucket", run, 2, ["../../PWNED", str(target)])
    run.put_text(f"{checkpoint_dir(3)}/{MANIFEST}", json.dumps({"step": "../../3", "files": {}}))
    run.put_text(f"{checkpoint_dir(4)}/{MANIFEST}", "{not json")
    before = files_outside(tmp_path, tmp_path / "resume")
    warnings = []
    manifest, folder = CheckpointStore(run).fetch_latest(tmp_path / "resume", warnings.append)
    assert manifest["step"] == 1 and sha256_file(folder / "good.bin") == sha256_file(good)
    assert files_outside(tmp_path, tmp_path / "resume") == before
    assert not target.exists() and not (tmp_path / "PWNED").exists()
    assert [p.name for p in (tmp_path / "resume").rglob("*") if p.is_file()] == ["good.bin"]
    for step in (2, 3, 4):
        assert sum(f"r/{checkpoint_dir(step)}/{MANIFEST}" in w for w in warnings) == 1, warnings
    assert any("../../PWNED" in w and "not a plain relative path" in w for w in warnings)


def test_a_manifest_in_another_checkpoints_folder_is_not_a_commit(tmp_path):
    run, _ = committed_run(open_storage(str(tmp_path / "bucket")), tmp_path)
    run.put_text(f"{checkpoint_dir(9)}/{MANIFEST}", json.dumps({"step": 1, "files": {}}))  # claims step 1
    assert [m["step"] for m in CheckpointStore(run).manifests()] == [1]


def test_local_storage_never_touches_files_outside_its_root(tmp_path):
    storage = open_storage(str(tmp_path / "bucket"))
    (tmp_path / "secret").write_text("s")
    for key in ("../secret", "/etc/passwd", "r/../../secret"):
        with pytest.raises(InputError, match="refusing storage key"):
            storage.get_bytes(key)
        with pytest.raises(InputError, match="refusing storage key"):
            storage.put_bytes(key, b"x")
    assert (tmp_path / "secret").read_text() == "s"
    with pytest.raises(InputError, match="not a run URI"):
        split_run_uri("file://./runs/..")


@pytest.mark.slow
def test_resume_from_s3_writes_nothing_a_tampered_manifest_names(s3_env, tmp_path):
    """On S3 the server resolves '..' and '//' in a GET, so the planted objects sit at their resolved keys."""
    storage = open_storage("s3://ehrseq-test/hardening")
    run, good = committed_run(storage, tmp_path)
    target = tmp_path / "outside" / "PWNED"
    for key in ("r/PWNED", f"r/{checkpoint_dir(2)}{target}"):
        storage.put_bytes(key, b"#!/bin/sh\necho PWNED\n")
    names = ["../../PWNED", str(target)]
    run.put_text(f"{checkpoint_dir(2)}/{MANIFEST}", json.dumps(
        {"step": 2, "files": {n: {"size": 20, "sha256": "0" * 64} for n in names}}))
    warnings = []
    manifest, folder = CheckpointStore(run).fetch_latest(tmp_path / "resume", warnings.append)
    assert manifest["step"] == 1 and (folder / "good.bin").read_bytes() == good.read_bytes()
    assert files_outside(tmp_path, tmp_path / "resume") == [good] and not target.exists()
    assert len(warnings) == 1 and f"s3://ehrseq-test/hardening/r/{checkpoint_dir(2)}/{MANIFEST}:" in warnings[0]


@pytest.mark.slow
def test_a_run_resumes_past_a_tampered_manifest_and_writes_nothing_it_names(tmp_path):
    spec = load_spec(SMALL_SPEC, ["data.num_patients=100", "data.max_seq_len=24", "train.batch_size=8",
                                  "train.eval_every=0", f"runtime.work_dir={tmp_path}/w", "name=r",
                                  f"storage.uri=file://{tmp_path}/bucket", "train.max_steps=2"])
    assert run_job(spec, Console(quiet=True)) == 0
    run = RunFolder(open_storage(str(tmp_path / "bucket")), "r")
    plant_evil_checkpoint(tmp_path / "bucket", run, 99, ["../../../PWNED", str(tmp_path / "outside" / "PWNED")])
    before = files_outside(tmp_path, tmp_path / "w")
    console = Console(record=True, width=1000, file=io.StringIO())
    spec.train.max_steps = 3
    assert run_job(spec, console) == 0
    said = console.export_text()
    assert f"ignoring checkpoint manifest file://{tmp_path}/bucket/r/{checkpoint_dir(99)}/{MANIFEST}" in said
    assert "resuming file://" in said and "from step 2" in said
    new = set(files_outside(tmp_path, tmp_path / "w")) - set(before)
    assert new and all(p.is_relative_to(tmp_path / "bucket" / "r") for p in new) and "PWNED" not in str(new)
    assert not [p for p in (tmp_path / "bucket" / "r" / checkpoint_dir(99)).rglob("*") if p.is_file()]  # pruned


# Integers below 2**63 (pydantic already refuses larger ones), floats up to inf and nan.
ABSURD = {"train.max_steps": "1.0e+15", "train.batch_size": "1.0e+15", "train.eval_batch_size": "1.0e+15",
          "task.horizon_days": "1.0e+300", "checkpoint.keep_last": "1.0e+15", "checkpoint.interval_seconds": ".inf",
          "train.lr": ".nan", "train.weight_decay": ".inf", "train.log_every": "1.0e+12", "seed": "1.0e+15",
          "data.num_patients": "1.0e+12", "train.grad_accum_steps": "1048576", "runtime.price_per_hour": "1.0e+9"}


@pytest.mark.parametrize("field", sorted(ABSURD))
def test_absurd_numbers_are_refused_at_validation_naming_the_field(field):
    refusals = "less than or equal to|a finite number|a valid integer"  # strict: no float for an integer field
    with pytest.raises(InputError, match=rf"{field}: Input should be ({refusals})"):
        load_spec(SMALL_SPEC, [f"{field}={ABSURD[field]}"])


@pytest.mark.parametrize("field", ["storage.uri=s3://AKIA1:SECRETXYZ@bucket/runs",
                                   "storage.endpoint_url=http://AKIA1:SECRETXYZ@minio:9000",
                                   "model.init_from=s3://AKIA1:SECRETXYZ@bucket/runs/pretrain"])
def test_credentials_in_urls_are_refused_without_echoing_them(field):
    with pytest.raises(InputError, match="put credentials in AWS_") as refused:
        load_spec(SMALL_SPEC, [field, "model.kind=behrt", "task.kind=binary"])
    assert field.split("=")[0] in str(refused.value) and "SECRETXYZ" not in str(refused.value)
    with pytest.raises(InputError, match="put credentials in AWS_"):
        open_storage("s3://bucket/runs", "https://user:SECRETXYZ@r2.example.com")


def cli_in_process(monkeypatch, capsys, *args):
    """`ehrseq ARGS` through the real entry point (error mapping included), without a subprocess."""
    from ehrseq_runner.cli import main

    monkeypatch.setattr(sys, "argv", ["ehrseq", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def bad_spec_files(tmp_path):
    name = "name: x\n"
    unreadable = tmp_path / "unreadable.yaml"
    unreadable.write_text(name)
    unreadable.chmod(0)
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(12))
    files = {"latin-1": name.encode() + "data: {path: caf\u00e9}\n".encode("latin-1"),
             "utf-16 without BOM": name.encode("utf-16-le"),
             "deeply nested": name.encode() + b"data: " + b"[" * 100_000 + b"]" * 100_000,
             "billion laughs": name.encode() + laughs.encode(),
             "s3:// without bucket": b"name: x\nstorage: {uri: 's3://'}\n",
             "huge": name.encode() + b"# " + b"x" * (2 << 20)}
    paths = {}
    for label, data in files.items():
        paths[label] = tmp_path / f"{len(paths)}.yaml"
        paths[label].write_bytes(data)
    paths["unreadable"] = unreadable if os.geteuid() else Path("/proc/self/mem")  # root reads mode 000 files
    return paths


EXPECTED = {"latin-1": "not UTF-8 text", "utf-16 without BOM": "YAML syntax error", "deeply nested": "nested deeper",
            "billion laughs": "aliases", "s3:// without bucket": "expected s3://BUCKET[/PREFIX]",
            "huge": "too large", "unreadable": "cannot read the spec"}


def test_bad_spec_files_exit_2_with_one_line_fast(tmp_path, monkeypatch, capsys):
    for label, path in bad_spec_files(tmp_path).items():
        started = time.monotonic()
        code, err = cli_in_process(monkeypatch, capsys, "validate", str(path))
        assert (code, len(err.strip().splitlines())) == (2, 1), (label, err)
        assert EXPECTED[label] in err and "Traceback" not in err, (label, err)
        assert time.monotonic() - started < 2, label


def test_utf16_and_bom_specs_are_read(tmp_path):
    for encoding in ("utf-16", "utf-8-sig"):  # how Windows editors save
        (tmp_path / "s.yaml").write_bytes("name: x\ntrain: {max_steps: 7}\n".encode(encoding))
        assert load_spec(tmp_path / "s.yaml").train.max_steps == 7


def test_markup_in_stored_names_is_printed_not_parsed(tmp_path, monkeypatch, capsys):
    code, err = cli_in_process(monkeypatch, capsys, "status", f"file://{tmp_path}/[/PREFIX]/[bold]r")
    assert code == 2 and "[/PREFIX]/[bold]r: no such run" in err


def test_a_huge_wrong_value_is_not_echoed_whole(tmp_path):
    (tmp_path / "s.yaml").write_text(f"name: x\ntrain: {{max_steps: [{', '.join(['1'] * 3000)}]}}\n")
    with pytest.raises(InputError, match=r"train.max_steps: Input should be a valid integer") as refused:
        load_spec(tmp_path / "s.yaml")
    assert len(str(refused.value)) < 400
