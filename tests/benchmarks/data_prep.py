"""Benchmark: MEDS dataset -> token cache (ehrseq.data.token_cache), events/s and peak RSS, against the object path.

    python tests/benchmarks/data_prep.py --num-patients 1000000 --out prep-1m.json

Writes a synthetic MEDS dataset of N patients shard by shard (never all in memory; not timed; reused when
already there), then builds the token cache in a fresh subprocess that reports its own peak RSS, and for
comparison runs the old object path, which the product no longer has (the test-only reference:
read_meds_dataset + patients_by_split + build_vocabulary + encode_patient), on a smaller dataset
(--old-num-patients; it holds everything as Python objects: 11 GB at 1M patients). With --examples, the binary
task's examples cache against labelled_splits + encode_examples likewise.

Seen on the 2-core dev machine (max_len 512, min_count 1, 20k-patient shards; quiet unless noted):

    N patients   events        token cache                           object path
    100k         3.7M          0.64-1.28M events/s, 304 MB RSS       132k events/s, 1.26 GB RSS (load 5-7)
    1M           36.9M         5.54M events/s, 370 MB RSS            (228k events/s, 11.2 GB RSS: the issue)
    5M           184.4M        4.20M events/s (load ~2), 438 MB RSS
"""

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ehrseq_runner.commands.bench import SHARD_PATIENTS, peak_rss_mb, run_child, synthetic_shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the per-patient reference


def objects_child(dataset: str, max_len: int, min_count: int, examples: bool = False) -> dict[str, Any]:
    """One run of the old object path over every split (with `examples`: the binary task's examples), with this
    process's peak RSS."""
    from ehrseq.data.meds_io import read_meds_dataset
    from ehrseq.data.stream import SPLITS
    from ehrseq.data.synthetic import BINARY_TASK

    from support.reference_histories import build_vocabulary, encode_patient
    from support.reference_splits import encode_examples, labelled_splits, patients_by_split

    start = time.perf_counter()
    data = read_meds_dataset(Path(dataset))
    labelled = labelled_splits(data, BINARY_TASK, SPLITS)[0] if examples else None
    patients = {s: labelled[s].patients for s in SPLITS} if examples else patients_by_split(data)
    read_s = time.perf_counter() - start
    vocab = build_vocabulary(patients["train"], min_count)
    vocab_s = time.perf_counter() - start - read_s
    encoded = ({s: encode_examples(labelled[s], vocab, max_len) for s in SPLITS} if examples
               else {s: [encode_patient(p, vocab, max_len) for p in ps] for s, ps in patients.items()})
    total = time.perf_counter() - start
    return {"runs": [{"total_s": total, "read_and_patients_s": read_s, "vocab_s": vocab_s,
                      "encode_s": total - read_s - vocab_s}],
            "counts": {"events": data.data.num_rows, "patients": sum(map(len, encoded.values())),
                       "tokens": sum(len(e.codes) for es in encoded.values() for e in es), "codes": len(vocab)},
            "peak_rss_mb": peak_rss_mb()}


def in_fresh_process(function: Any, **kwargs: Any) -> dict[str, Any]:
    """`function(**kwargs)` in a fresh interpreter (spawned, not forked), so its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, **kwargs).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-patients", type=int, default=100_000)
    parser.add_argument("--old-num-patients", type=int, default=100_000, help="0 skips the old path")
    parser.add_argument("--examples", action="store_true", help="also the binary task's examples, both paths")
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
    for name, examples in (("token_cache", False), ("examples_cache", True))[: 1 + args.examples]:
        caches = args.work / f"{name}-n{args.num_patients}"
        built = run_child("build_child", dataset=str(path), work=str(caches), max_len=args.max_len,
                          min_count=args.min_count, examples=examples)
        (run,) = built["runs"]
        report[name] = {**built, "events_per_s": built["counts"]["events"] / run["build_s"]}
        if not args.keep:
            shutil.rmtree(caches)
    if args.old_num_patients:
        old_path, _ = synthetic_shards(args.work, args.old_num_patients, args.seed, args.chunk)
        for name, examples in (("objects", False), ("objects_examples", True))[: 1 + args.examples]:
            objects = in_fresh_process(objects_child, dataset=str(old_path), max_len=args.max_len,
                                       min_count=args.min_count, examples=examples)
            report[name] = {**objects, "events_per_s": objects["counts"]["events"] / objects["runs"][0]["total_s"]}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
