"""Collation benchmark (not a CI test): batches from flat TokenArrays, per-row loop vs the vectorised gather.

    .venv/bin/python tests/benchmarks/collate.py --batch 128 --seq-len 512 --patients 20000 --out collate.json

Random TokenArrays (half the patients at full `--seq-len`, the rest uniform in 1..seq-len), batches drawn as
the trainer draws them (`--order epoch`: EpochOrder's length-grouped batches) or uniformly (`--order random`).
One process, pinned to one core (torch.set_num_threads(1) and sched_setaffinity), so both paths run on the same
machine state. Paths, each the median of `--repeats` batches:

  old        collate_rows([row(ta, i) ...])      the former TokenArrays.collate (objects + per-row loop)
  old_rows   collate_rows(patients)              the per-row loop alone, objects built beforehand (the old trainer)
  new_list   collate(patients)                   the former list path (flatten, then the shared gather)
  new        ta.collate(idx)                     the vectorised gather from the flat arrays

Every timed batch of `new` is checked bit-identical to `old`'s. tokens/s counts real tokens
(attention_mask.sum()); slots/s counts B x T padded positions. Each figure is given per the thread's CPU clock
(time.thread_time: one core's throughput even on a shared, loaded machine) and per the wall clock (what a loaded
machine actually delivered). Exits 1 if `new` is under `--target` tokens/s on the CPU clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ehrseq.data.batching import Batch, EpochOrder
from ehrseq.data.token_arrays import DTYPES, TokenArrays

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the per-row reference
from support.reference_batches import collate, collate_rows, row  # noqa: E402


def random_arrays(patients: int, seq_len: int, vocab: int, seed: int) -> TokenArrays:
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(patients) < 0.5, seq_len, rng.integers(1, seq_len + 1, patients))  # (P,)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)  # (P + 1,)
    n = int(offsets[-1])
    return TokenArrays(codes=rng.integers(1, vocab, n).astype(DTYPES["codes"]),
                       ages=rng.integers(0, 1441, n).astype(DTYPES["ages"]),
                       segments=rng.integers(0, 3, n).astype(DTYPES["segments"]),
                       positions=rng.integers(0, 256, n).astype(DTYPES["positions"]),
                       offsets=offsets, subject_ids=rng.integers(0, 2**40, patients).astype(np.int64))


def pin_one_core() -> int | None:
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return core
    return None


def same(a: Batch, b: Batch) -> bool:
    return all(getattr(a, f.name).dtype == getattr(b, f.name).dtype and torch.equal(getattr(a, f.name),
               getattr(b, f.name)) for f in fields(Batch))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--patients", type=int, default=20000)
    ap.add_argument("--vocab", type=int, default=30000)
    ap.add_argument("--order", choices=("epoch", "random"), default="epoch")
    ap.add_argument("--repeats", type=int, default=15, help="timed batches per path (the median is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=5e6, help="tokens/s the vectorised path must reach")
    ap.add_argument("--out", help="write the figures here as JSON")
    args = ap.parse_args()

    core = pin_one_core()
    ta = random_arrays(args.patients, args.seq_len, args.vocab, args.seed)
    if args.order == "epoch":
        order = EpochOrder(ta.lengths, args.batch, args.seed)
        batches = [order.batch_indices(0, b % len(order)) for b in range(args.repeats)]
    else:
        rng = np.random.default_rng(args.seed + 1)
        batches = [rng.integers(0, len(ta), args.batch).tolist() for _ in range(args.repeats)]
    objects = [[row(ta, i) for i in idx] for idx in batches]  # for the paths that start from EncodedPatient lists

    paths = {"old": lambda k: collate_rows([row(ta, i) for i in batches[k]]),
             "old_rows": lambda k: collate_rows(objects[k]),
             "new_list": lambda k: collate(objects[k]),
             "new": lambda k: ta.collate(batches[k])}
    reference = [collate_rows(objects[k]) for k in range(args.repeats)]
    for k in range(min(3, args.repeats)):  # warm-up (allocator, caches)
        for run in paths.values():
            run(k)
    results = {}
    for name, run in paths.items():
        wall, cpu, tokens, slots = [], [], [], []
        for k in range(args.repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            batch = run(k)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
            if not same(batch, reference[k]):
                print(f"{name}: batch {k} differs from the per-row loop's", file=sys.stderr)
                return 1
            tokens.append(batch.num_tokens)
            slots.append(batch.codes.numel())
        results[name] = {"mean_tokens_per_batch": statistics.fmean(tokens),
                         "mean_slots_per_batch": statistics.fmean(slots)}
        for clock, seconds in (("cpu", cpu), ("wall", wall)):
            results[name] |= {
                f"{clock}_median_s_per_batch": statistics.median(seconds),
                f"{clock}_tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds, strict=True)),
                f"{clock}_slots_per_s": statistics.median(n / s for n, s in zip(slots, seconds, strict=True))}
    new, old, old_rows = results["new"], results["old"], results["old_rows"]
    report = {"config": {**vars(args), "core": core, "torch_threads": torch.get_num_threads(),
                         "tokens_in_arrays": int(ta.offsets[-1]), "numpy": np.__version__, "torch": torch.__version__},
              "paths": results, "bit_identical": True,
              "ratio_new_over_old": {c: new[f"{c}_tokens_per_s"] / old[f"{c}_tokens_per_s"] for c in ("cpu", "wall")},
              "ratio_new_over_old_rows": {c: new[f"{c}_tokens_per_s"] / old_rows[f"{c}_tokens_per_s"]
                                          for c in ("cpu", "wall")},
              "meets_target": new["cpu_tokens_per_s"] >= args.target}
    print("path      clock   M tokens/s   M slots/s   ms/batch")
    for name, r in results.items():
        for c in ("cpu", "wall"):
            print(f"{name:9s} {c:5s} {r[f'{c}_tokens_per_s'] / 1e6:12.2f} {r[f'{c}_slots_per_s'] / 1e6:11.2f} "
                  f"{r[f'{c}_median_s_per_batch'] * 1e3:10.2f}")
    print(f"new / old = {report['ratio_new_over_old']['cpu']:.1f}x (cpu), {report['ratio_new_over_old']['wall']:.1f}x "
          f"(wall); new / old_rows = {report['ratio_new_over_old_rows']['cpu']:.1f}x (cpu); target "
          f"{args.target / 1e6:.1f} M tokens/s on one core (cpu clock) {'met' if report['meets_target'] else 'MISSED'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
