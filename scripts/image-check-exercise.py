"""Exercises a built ehrseq image without a container runtime (`podman run` cannot start here).

Each start is a fresh container's filesystem (`podman create` + `podman mount`) entered with chroot as the
image's user, with the image's own environment, working directory and entrypoint, tini as PID 1 of a new
PID namespace. Against a real S3 server (weed on loopback) it checks: the small preset runs, SIGTERM to tini
commits a checkpoint and exits 75 within the grace budget, a second start resumes from the bucket and completes,
`status` and `pull` pass through the entrypoint, and the image holds no tests, caches, build inputs or secrets.

Usage: image-check-exercise.py IMAGE   (run as root; scripts/image-check builds IMAGE and calls this)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support.s3_server import SECRET_KEY, WeedServer  # noqa: E402  (the tests' real S3 server, reused)

BUCKET = "ehrseq"
RUN_URI = f"s3://{BUCKET}/runs/behrt-small-mlm"
# The small preset, shortened to about a minute of CPU training (on an idle machine) in two starts.
JOB = ["jobs/behrt_small.yaml", "--set", f"storage.uri=s3://{BUCKET}/runs", "--set", "runtime.work_dir=/tmp/work",
       "--set", "data.num_patients=500", "--set", "train.max_steps=200", "--set", "train.eval_every=100"]
GRACE_SECONDS = 5.0  # checkpoint.grace_seconds of the small preset (RunPod spot's budget)
# Paths that must not exist in the image: sources, tests, caches, build-time inputs.
FORBIDDEN = ["src", "root/.cache", "home/ehrseq/.cache", "home/ehrseq/app/tests", "home/ehrseq/app/.git"]
FORBIDDEN_NAMES = {"tests", ".pytest_cache", ".ruff_cache", ".git", ".env", "credentials", "conftest.py"}


@dataclass
class ImageConfig:
    """What `docker run` would take from the image: environment, user, working directory, entrypoint."""

    env: list[str]
    user: str
    workdir: str
    entrypoint: list[str]

    @classmethod
    def of(cls, image: str) -> ImageConfig:
        config = json.loads(_out(["podman", "image", "inspect", "--format", "{{json .Config}}", image]))
        return cls(config.get("Env") or [], config.get("User") or "0:0", config.get("WorkingDir") or "/",
                   config.get("Entrypoint") or [])


def _out(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


class Container:
    """A fresh container filesystem from the image, mounted on the host; removed on exit."""

    def __init__(self, image: str) -> None:
        self.id = _out(["podman", "create", image])
        self.root = Path(_out(["podman", "mount", self.id]))

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["podman", "rm", "-f", self.id], capture_output=True)

    def start(self, config: ImageConfig, args: list[str], extra_env: dict[str, str], log: Path) -> subprocess.Popen:
        """Starts the entrypoint with args like `docker run`; tini becomes PID 1 of a new PID namespace."""
        env = [*config.env, "HOME=/home/ehrseq", *(f"{k}={v}" for k, v in extra_env.items())]
        inner = ["/usr/bin/env", "-i", f"--chdir={config.workdir}", *env, *config.entrypoint, *args]
        root = shlex.quote(str(self.root))
        setup = (f"mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && "
                 f"exec chroot --userspec={config.user} {root} {shlex.join(inner)}")
        return subprocess.Popen(["unshare", "--pid", "--fork", "--mount", "--propagation", "private",
                                 "sh", "-c", setup], stdout=log.open("w"), stderr=subprocess.STDOUT)

    def run(self, config: ImageConfig, args: list[str], extra_env: dict[str, str], log: Path,
            timeout: float = 900) -> tuple[int, str]:
        proc = self.start(config, args, extra_env, log)
        return proc.wait(timeout=timeout), log.read_text()


def pid1_of(namespace_parent: subprocess.Popen, timeout: float = 30) -> int:
    """Host pid of the PID namespace's init (tini), the forked child of `unshare --fork`."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        children = Path(f"/proc/{namespace_parent.pid}/task/{namespace_parent.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("no PID 1 in the container's namespace")


def check(ok: bool, what: str, detail: str = "") -> None:
    print(("PASS " if ok else "FAIL ") + what)
    if not ok:
        sys.exit(f"image-check failed: {what}\n{detail[-4000:]}")


def bucket_json(server: WeedServer, key: str) -> dict:
    return json.loads(server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def exercise_hygiene(image: str, config: ImageConfig) -> None:
    with Container(image) as box:
        present = [p for p in FORBIDDEN if (box.root / p).exists()]
        check(not present, "no sources, tests or caches in the image", f"present: {present}")
        build_inputs = [p.name for p in (box.root / "mnt").iterdir()] + [
            p.name for p in (box.root / "opt").iterdir() if p.name != "venv"]
        check(not build_inputs, "no build inputs (wheels, constraints, CA bundle, mount points) in /mnt or /opt",
              str(build_inputs))
        app_and_venv = [box.root / "home/ehrseq", box.root / "opt/venv/lib"]
        named = [str(p.relative_to(box.root)) for top in app_and_venv for p in top.rglob("*")
                 if p.name in FORBIDDEN_NAMES and not _third_party(p)]
        check(not named, "no tests, tool caches or credential files in the app or ehrseq's packages", str(named))
    leaked = [e for e in config.env if e.split("=")[0].startswith(("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_CERT",
                                                                     "AWS_"))]
    check(not leaked, "no build arguments or credentials in the image's environment", str(leaked))
    history = _out(["podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image])
    check(SECRET_KEY not in history and "AWS_SECRET" not in history, "no secrets in the image history")


def _third_party(path: Path) -> bool:
    """Tests shipped inside third-party packages (numpy/tests, ...) are theirs, not ours."""
    parts = path.parts
    ours = ("ehrseq", "ehrseq_runner")
    return "site-packages" in parts and not any(p in ours for p in parts[parts.index("site-packages"):])


def main(image: str) -> None:
    config = ImageConfig.of(image)
    size = int(_out(["podman", "image", "inspect", "--format", "{{.Size}}", image]))
    print(f"image {image}: {size / 1e9:.2f} GB ({size:,} bytes); entrypoint {config.entrypoint}, user {config.user}")
    labels = json.loads(_out(["podman", "image", "inspect", "--format", "{{json .Config.Labels}}", image])) or {}
    check(labels.get("io.ehrseq.torch-cuda") == "none" and labels.get("io.ehrseq.torch-spec", "").startswith("torch"),
          f"the image's labels name its torch build ({labels.get('io.ehrseq.torch-spec')}, CPU)", json.dumps(labels))
    exercise_hygiene(image, config)
    with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
        server = WeedServer(Path(tmp) / "weed")
        server.start(bucket=BUCKET)
        try:
            exercise_run(image, config, server, Path(tmp))
        finally:
            server.stop()


def exercise_run(image: str, config: ImageConfig, server: WeedServer, tmp: Path) -> None:
    creds = server.env
    with Container(image) as first:
        started = time.monotonic()
        proc = first.start(config, JOB, creds, tmp / "first.log")
        tini = pid1_of(proc)
        metrics = first.root / "tmp/work/behrt-small-mlm/metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            if proc.poll() is not None or time.monotonic() - started > 600:
                check(False, "first start trains", (tmp / "first.log").read_text())
            time.sleep(0.1)
        sent = time.monotonic()
        check(Path(f"/proc/{tini}/comm").read_text().strip() == "tini", "tini is PID 1 of the container")
        os.kill(tini, signal.SIGTERM)  # what `docker stop` sends to PID 1
        code = proc.wait(timeout=60)
        stopped = time.monotonic() - sent
        log = (tmp / "first.log").read_text()
    print(f"first start: {sent - started:.1f} s to 2 metrics records (step 20); "
          f"SIGTERM to tini -> exit {code} in {stopped:.2f} s")
    check(code == 75, "SIGTERM through tini exits 75", log)
    banner = next((line for line in log.splitlines() if line.startswith("ehrseq image: torch")), "")
    check("CPU-only build; TORCH_SPEC" in banner, f"the job starts by naming torch's build ({banner})", log)
    check(stopped < GRACE_SECONDS, f"exit within the {GRACE_SECONDS:.0f} s grace budget ({stopped:.2f} s)")
    status = bucket_json(server, "runs/behrt-small-mlm/status.json")
    durable = status.get("durable_step", 0)
    manifest_key = f"runs/behrt-small-mlm/checkpoints/step-{durable:09d}/manifest.json"
    check(status["state"] == "preempted" and durable > 0 and bucket_json(server, manifest_key)["step"] == durable,
          f"checkpoint committed in the bucket at step {durable}", json.dumps(status))

    with Container(image) as second:  # a fresh pod: nothing local survives, only the bucket
        started = time.monotonic()
        code, log = second.run(config, JOB, creds, tmp / "second.log")
        wall = time.monotonic() - started
        resumed = re.search(r"from step (\d+)", log)
        print(f"second start: resumed from step {resumed and resumed.group(1)}, exit {code} after {wall:.1f} s")
        check(code == 0 and resumed is not None and int(resumed.group(1)) == durable,
              f"second start resumes from the bucket at step {durable} and completes", log)
        status = bucket_json(server, "runs/behrt-small-mlm/status.json")
        check(status["state"] == "completed", f"run completed in the bucket (durable_step {status['durable_step']})")

        code, shown = second.run(config, ["status", "--json", RUN_URI], creds, tmp / "status.log")
        check(code == 0 and '"state": "completed"' in shown, "`status` passes through the entrypoint", shown)
        code, log = second.run(config, ["pull", RUN_URI, "/tmp/pulled"], creds, tmp / "pull.log")
        summary = second.root / "tmp/pulled/summary.json"
        check(code == 0 and summary.is_file(), "`pull` passes through the entrypoint", log)
        print(f"pulled summary.json: {json.loads(summary.read_text()).get('metrics')}")
        outputs = "".join(p.read_text() for p in tmp.glob("*.log"))
        spec = server.client().get_object(Bucket=BUCKET, Key="runs/behrt-small-mlm/spec.yaml")["Body"].read()
        check(SECRET_KEY not in outputs and SECRET_KEY.encode() not in spec, "the secret key is in no output or spec")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
