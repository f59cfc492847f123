"""Benchmark: MEDS dataset -> token cache (ehrseq.data.token_cache), events/s and peak RSS, against the object path.

    python tests/benchmarks/data_prep.py --num-patients 1000000 --out prep-1m.json

Writes a synthetic MEDS dataset of N patients shard by shard (never all in memory; not timed; reused when
already there), then builds the token cache in a fresh subprocess that reports its own peak RSS, and for
comparison runs the old path (read_meds_dataset + patients_by_split + Vocabulary.build + encode_patient) on
a smaller dataset (--old-num-patients; it holds everything as Python objects: 11 GB at 1M patients).

Seen on the 2-core dev machine (load average 5-7 from other work; max_len 512, min_count 1, 20k-patient shards):

    N patients   events        token cache                           object path
    100k         3.7M          0.64-1.28M events/s, 304 MB RSS       132k events/s, 1.26 GB RSS
    1M           36.9M         1.29-1.60M events/s, 334-338 MB RSS   (228k events/s, 11.2 GB RSS: the issue)
    5M           184.4M        1.19M events/s, 404 MB RSS
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc


def write_dataset(dest: Path, num_patients: int, seed: int, chunk: int) -> float:
    """The seeded synthetic cohort in chunks of `chunk` patients, one shard each; seconds taken (0 if reused)."""
    from ehrseq.data.meds_io import MedsWriter
    from ehrseq.data.synthetic import assign_splits, generate_synthetic

    if (dest / "metadata" / "dataset.json").is_file():
        return 0.0
    start = time.perf_counter()
    seeds = np.random.SeedSequence(seed).spawn((num_patients + chunk - 1) // chunk)
    with MedsWriter(dest, dest.name) as writer:
        for i, s in enumerate(seeds):
            data = generate_synthetic(min(chunk, num_patients - i * chunk), int(s.generate_state(1)[0])).data
            ids = pc.add(data.column("subject_id"), i * 10_000_000)  # each chunk numbers its subjects from 10,000
            writer.write_shard(data.set_column(0, "subject_id", ids))
        writer.finish(assign_splits(writer.all_subject_ids(), seed))
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_new(dataset: Path, cache: Path, max_len: int, min_count: int) -> dict:
    from ehrseq.data.token_cache import build_token_cache, cache_key

    start = time.perf_counter()
    key = cache_key(dataset, max_len, min_count)
    key_s = time.perf_counter() - start
    manifest = build_token_cache(dataset, cache, max_len, min_count, key=key)
    total = time.perf_counter() - start
    counts = manifest["counts"]
    return {"path": "token_cache", "events": counts["events"], "patients": counts["patients"],
            "tokens": counts["tokens"], "seconds": {"key": key_s, **manifest["seconds"], "total": total},
            "events_per_s": counts["events"] / total, "peak_rss_mb": peak_rss_mb()}


def child_old(dataset: Path, max_len: int, min_count: int) -> dict:
    from ehrseq.data.cohort import patients_by_split
    from ehrseq.data.meds_io import read_meds_dataset
    from ehrseq.data.tokenize import encode_patient
    from ehrseq.data.vocab import Vocabulary

    start = time.perf_counter()
    data = read_meds_dataset(dataset)
    patients = patients_by_split(data)
    read_s = time.perf_counter() - start
    vocab = Vocabulary.build(patients["train"], min_count)
    vocab_s = time.perf_counter() - start - read_s
    encoded = {s: [encode_patient(p, vocab, max_len) for p in ps] for s, ps in patients.items()}
    total = time.perf_counter() - start
    return {"path": "objects", "events": data.data.num_rows, "patients": sum(map(len, encoded.values())),
            "tokens": sum(len(e.codes) for es in encoded.values() for e in es),
            "seconds": {"read_and_patients": read_s, "vocab": vocab_s, "encode": total - read_s - vocab_s,
                        "total": total},
            "events_per_s": data.data.num_rows / total, "peak_rss_mb": peak_rss_mb()}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-patients", type=int, default=100_000)
    parser.add_argument("--old-num-patients", type=int, default=100_000, help="0 skips the old path")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--min-count", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=20_000, help="patients per written shard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ehrseq-data-prep"))
    parser.add_argument("--keep", action="store_true", help="keep the token cache")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, dataset, *rest = args.child
        if kind == "new":
            result = child_new(Path(dataset), Path(rest[0]), args.max_len, args.min_count)
        else:
            result = child_old(Path(dataset), args.max_len, args.min_count)
        print(json.dumps(result))
        return

    def dataset(n: int) -> tuple[Path, float]:
        path = args.work / f"synthetic-n{n}-seed{args.seed}-chunk{args.chunk}"
        return path, write_dataset(path, n, args.seed, args.chunk)

    report: dict = {"num_patients": args.num_patients, "max_len": args.max_len, "min_count": args.min_count}
    path, write_s = dataset(args.num_patients)
    report["dataset"] = {"path": str(path), "write_seconds": write_s,
                         "bytes": sum(f.stat().st_size for f in path.glob("data/**/*.parquet"))}
    cache = args.work / f"tokens-n{args.num_patients}"
    report["token_cache"] = run_child("new", str(path), str(cache), f"--max-len={args.max_len}",
                                      f"--min-count={args.min_count}")
    report["token_cache"]["cache_bytes"] = sum(f.stat().st_size for f in cache.iterdir())
    if not args.keep:
        import shutil

        shutil.rmtree(cache)
    if args.old_num_patients:
        old_path, _ = dataset(args.old_num_patients)
        report["objects"] = run_child("old", str(old_path), f"--max-len={args.max_len}",
                                      f"--min-count={args.min_count}")
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
