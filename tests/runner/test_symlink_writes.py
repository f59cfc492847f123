"""Issue 28 item 3: file:// storage never writes (or deletes) through a symlink in a run folder; it refuses,
naming the path, and `ehrseq run` exits 2 with nothing written where the link points."""

from __future__ import annotations

import pytest

from ehrseq_runner.storage.local import LocalStorage
from ehrseq_runner.storage.safe_paths import UnsafeName

from support.helpers import SMALL_SPEC, run_cli


@pytest.mark.parametrize("link", ["r1/checkpoints", "r1/checkpoints/step-000000010", "r1/plots"])
def test_writes_through_a_symlinked_folder_are_refused(tmp_path, link):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim.txt").write_text("keep")
    storage = LocalStorage(tmp_path / "runs")
    (tmp_path / "runs" / link).parent.mkdir(parents=True)
    (tmp_path / "runs" / link).symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "src.bin").write_bytes(b"x")
    key = f"{link}/victim.txt"
    for write in (lambda: storage.put_bytes(key, b"x"), lambda: storage.put_file(key, tmp_path / "src.bin"),
                  lambda: storage.create(f"{link}/new.json", b"x"), lambda: storage.replace_if(key, b"x", "t"),
                  lambda: storage.delete(key)):
        with pytest.raises(UnsafeName, match=f"{tmp_path / 'runs' / link} is a symlink"):
            write()
    assert [p.name for p in elsewhere.iterdir()] == ["victim.txt"] and (elsewhere / "victim.txt").read_text() == "keep"


def test_a_symlinked_file_is_not_replaced(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("keep")
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "status.json").symlink_to(target)
    with pytest.raises(UnsafeName, match="status.json is a symlink"):
        LocalStorage(tmp_path / "runs").put_bytes("r1/status.json", b"{}")
    assert target.read_text() == "keep" and (tmp_path / "runs" / "r1" / "status.json").is_symlink()


@pytest.mark.slow
def test_run_with_a_symlinked_checkpoints_folder_exits_2_naming_it(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    result = run_cli("run", str(SMALL_SPEC), "--set", "name=r1", "--set", "data.num_patients=60",
                     "--set", "train.max_steps=3", "--set", f"storage.uri=file://{tmp_path}/runs",
                     "--set", f"runtime.work_dir={tmp_path}/work", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path}/runs/r1/checkpoints is a symlink" in result.stderr and "Traceback" not in result.stderr
    assert list(elsewhere.iterdir()) == []
