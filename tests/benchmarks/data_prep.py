"""Benchmark: MEDS dataset -> token cache (ehrseq.data.token_cache), events/s and peak RSS, against the object path.

    python tests/benchmarks/data_prep.py --num-patients 1000000 --out prep-1m.json

Writes a synthetic MEDS dataset of N patients shard by shard (never all in memory; not timed; reused when
already there), then builds the token cache in a fresh subprocess that reports its own peak RSS, and for
comparison runs the old path (read_meds_dataset + patients_by_split + Vocabulary.build + encode_patient) on
a smaller dataset (--old-num-patients; it holds everything as Python objects: 11 GB at 1M patients).

Seen on the 2-core dev machine (max_len 512, min_count 1, 20k-patient shards; quiet unless noted):

    N patients   events        token cache                           object path
    100k         3.7M          0.64-1.28M events/s, 304 MB RSS       132k events/s, 1.26 GB RSS (load 5-7)
    1M           36.9M         5.54M events/s, 370 MB RSS            (228k events/s, 11.2 GB RSS: the issue)
    5M           184.4M        4.20M events/s (load ~2), 438 MB RSS
"""

import argparse
import json
import shutil
from pathlib import Path

from ehrseq_runner.commands.bench import SHARD_PATIENTS, run_child, synthetic_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-patients", type=int, default=100_000)
    parser.add_argument("--old-num-patients", type=int, default=100_000, help="0 skips the old path")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--min-count", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=SHARD_PATIENTS, help="patients per written shard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ehrseq-data-prep"))
    parser.add_argument("--keep", action="store_true", help="keep the token cache")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    report: dict = {"num_patients": args.num_patients, "max_len": args.max_len, "min_count": args.min_count}
    path, write_s = synthetic_shards(args.work, args.num_patients, args.seed, args.chunk)
    report["dataset"] = {"path": str(path), "write_seconds": write_s,
                         "bytes": sum(f.stat().st_size for f in path.glob("data/**/*.parquet"))}
    caches = args.work / f"tokens-n{args.num_patients}"
    built = run_child("build_child", dataset=str(path), work=str(caches), max_len=args.max_len,
                      min_count=args.min_count)
    (run,) = built["runs"]
    report["token_cache"] = {**built, "events_per_s": built["counts"]["events"] / run["build_s"]}
    if not args.keep:
        shutil.rmtree(caches)
    if args.old_num_patients:
        old_path, _ = synthetic_shards(args.work, args.old_num_patients, args.seed, args.chunk)
        objects = run_child("objects_child", dataset=str(old_path), max_len=args.max_len, min_count=args.min_count)
        report["objects"] = {**objects, "events_per_s": objects["counts"]["events"] / objects["runs"][0]["total_s"]}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
