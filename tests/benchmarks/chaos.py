"""Chaos benchmark (issue 19 item 6; not a CI test): SIGKILLs at random moments and S3 outages, on a real S3 server.

    .venv/bin/python tests/benchmarks/chaos.py --kills 50 --outages 2 --outage-s 30 --out chaos.json

Three runs of one small job against `weed mini`: straight through; killed with SIGKILL `--kills` times (during
data preparation, steps, checkpoint writes and uploads, pruning, evaluation and the final bundle), resumed
each time; and one whose S3 server is stopped `--outages` times for `--outage-s` seconds. Checked: every
resume starts from the newest committed checkpoint whose files match their manifest (no corrupt or
half-committed one chosen, no step lost beyond it); the final losses, weights and held-out metrics equal the
straight run's; each bundle is complete. Prints the figures and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from support.s3_server import WeedServer  # noqa: E402

SPEC = TESTS.parent / "jobs" / "behrt_small.yaml"
BUCKET = "ehrseq-test"
RUN = "behrt-small-mlm"
BUNDLE = ("spec.yaml", "status.json", "metrics.jsonl", "summary.json", "SUMMARY.md", "model.safetensors")


def run_cmd(prefix: str, work: Path, steps: int) -> list[str]:
    sets = ["data.num_patients=400", "data.max_seq_len=48", f"train.max_steps={steps}", "train.log_every=1",
            "train.eval_every=40", "checkpoint.interval_seconds=0.2", "checkpoint.keep_last=2",
            f"storage.uri=s3://{BUCKET}/{prefix}", f"runtime.work_dir={work}"]
    return [sys.executable, "-c", "from ehrseq_runner.cli import main; main()", "run", str(SPEC),
            *(a for s in sets for a in ("--set", s))]


class Bucket:
    def __init__(self, server: WeedServer, prefix: str) -> None:
        self.client, self.root = server.client(), f"{prefix}/{RUN}/"

    def get(self, name: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=self.root + name)["Body"].read()

    def keys(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=self.root)
        return {o["Key"][len(self.root):] for page in pages for o in page.get("Contents", [])}

    def newest_valid_step(self) -> int:
        """The newest checkpoint whose manifest is present and whose files match it (0: none)."""
        manifests = sorted((k for k in self.keys() if k.endswith("/manifest.json")), reverse=True)
        for key in manifests:
            try:
                manifest = json.loads(self.get(key))
                folder = key.rsplit("/", 1)[0]
                if all(hashlib.sha256(self.get(f"{folder}/{name}")).hexdigest() == entry["sha256"]
                       for name, entry in manifest["files"].items()):
                    return manifest["step"]
            except Exception:  # noqa: BLE001 - pruned meanwhile or damaged: not a valid commit
                continue
        return 0

    def results(self) -> dict:
        train = [(r["step"], r["loss"]) for r in map(json.loads, self.get("metrics.jsonl").decode().splitlines())
                 if r["split"] == "train"]
        return {"train_losses": train, "weights_sha256": hashlib.sha256(self.get("model.safetensors")).hexdigest(),
                "metrics": json.loads(self.get("summary.json"))["metrics"],
                "missing": [name for name in BUNDLE if name not in self.keys()]}


def straight(server: WeedServer, tmp: Path, steps: int) -> tuple[dict, float]:
    start = time.monotonic()
    done = subprocess.run(run_cmd("straight", tmp / "w-straight", steps), env={**os.environ, **server.env},
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the straight run failed: {done.stderr[-2000:]}")
    return Bucket(server, "straight").results(), time.monotonic() - start


def chaos(server: WeedServer, tmp: Path, steps: int, kills: int, window_s: float, rng: random.Random) -> dict:
    """Kills the run `kills` times; before each restart notes the newest valid commit, which the resume must use."""
    bucket, log = Bucket(server, "chaos"), tmp / "chaos.log"
    resumes, bad, phases, takeovers, attempt, killed = [], [], {"before training": 0, "training": 0}, 0, 0, 0
    while True:
        attempt += 1
        expected = bucket.newest_valid_step()
        with log.open("w") as err:
            proc = subprocess.Popen(run_cmd("chaos", tmp / f"w-chaos-{attempt}", steps),
                                    env={**os.environ, **server.env}, stdout=subprocess.DEVNULL, stderr=err)
        killing = killed < kills
        if killing:
            early = rng.random() < 0.15  # data preparation, resume download, lease
            deadline = time.monotonic() + (rng.uniform(0.2, 4) if early else 60)
            while not early and "parameters)" not in log.read_text() and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0 if early else rng.uniform(0, window_s))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
                phases["before training" if early else "training"] += 1
        code = proc.wait()
        text = log.read_text()
        takeovers += "took over the stale lease" in text
        resumed = re.search(r"from step (\d+) ", " ".join(text.split()))  # rich wraps at 80 columns
        got = int(resumed.group(1)) if resumed else (0 if "parameters)" in text else None)
        if got is not None:
            resumes.append({"expected": expected, "resumed_from": got})
            if got != expected:
                bad.append(resumes[-1])
        if code == 0 or not killing:
            break
    return {"kills": killed, "resumes": len(resumes), "wrong_resumes": bad, "phases": phases,
            "lease_takeovers": takeovers, "last_exit": code, **bucket.results()}


def outages(server: WeedServer, tmp: Path, steps: int, count: int, outage_s: float) -> dict:
    bucket, log = Bucket(server, "outage"), tmp / "outage.log"
    with log.open("w") as err:
        proc = subprocess.Popen(run_cmd("outage", tmp / "w-outage", steps), env={**os.environ, **server.env},
                                stdout=subprocess.DEVNULL, stderr=err)
    for _ in range(count):
        while "parameters)" not in log.read_text() and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(2)
        server.stop()
        time.sleep(outage_s)
        server.start()
        if proc.poll() is not None:
            break
    code = proc.wait()
    return {"outages": count, "outage_s": outage_s, "exit": code, "stderr_tail": log.read_text()[-600:],
            **(bucket.results() if code == 0 else {})}


def compare(name: str, got: dict, reference: dict) -> list[str]:
    problems = [f"{name}: bundle misses {got['missing']}"] if got.get("missing") else []
    for key in ("train_losses", "weights_sha256", "metrics"):
        if got.get(key) != reference[key]:
            problems.append(f"{name}: {key} differs from the straight run's")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--outages", type=int, default=2)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window-s", type=float, default=6.0, help="kills land up to this long into training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="ehrseq-chaos-") as tmp_name:
        tmp = Path(tmp_name)
        server = WeedServer(tmp / "weed")
        server.start()
        try:
            reference, straight_s = straight(server, tmp, args.steps)
            started = time.monotonic()
            killed = chaos(server, tmp, args.steps, args.kills, args.window_s, random.Random(args.seed))
            chaos_s = time.monotonic() - started
            cut = outages(server, tmp, args.steps, args.outages, args.outage_s) if args.outages else None
        finally:
            server.stop()
    problems = compare("chaos", killed, reference)
    problems += [f"chaos: resumed from step {r['resumed_from']}, newest valid commit was {r['expected']}"
                 for r in killed["wrong_resumes"]]
    if cut is not None:
        problems += compare("outage", cut, reference) if cut["exit"] == 0 else [f"outage run exited {cut['exit']}"]
    report = {"steps": args.steps, "straight_s": round(straight_s, 1), "kills": killed["kills"],
              "kill_phases": killed["phases"], "wrong_resumes": len(killed["wrong_resumes"]),
              "lease_takeovers": killed["lease_takeovers"], "chaos_wall_s": round(chaos_s, 1),
              "outages": args.outages, "outage_s": args.outage_s,
              "outage_run_exit": cut["exit"] if cut else None, "problems": problems}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
