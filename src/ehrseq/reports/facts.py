"""summary.json's blocks about the data a run read: which dataset, splits and held-out subjects (the data
fingerprint), its tokens and cache, and for supervised tasks the labels used and dropped.

Built from the PreparedData alone, so a notebook's run reports its data as the runner's does; the runner adds what
only it knows (the spec, the training, the environment).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ehrseq.data.prepared import PreparedData
from ehrseq.data.stream import SPLITS


def data_facts(data: PreparedData, source: str, description: str, visit: str,
               held_out_ids: np.ndarray) -> dict[str, Any]:
    """`data_fingerprint` (dataset, splits and these held-out subjects), the `data` block (with `visit`, what a visit
    was: VisitRule.describe()) and, for a pretraining, `pretraining_data` (what a fine-tune checks: same data and
    splits, no labelled patient's future)."""
    block: dict[str, Any] = {"source": source, "dataset": data.identity, "dataset_name": data.name,
                             "description": description, "examples": {s: len(data.encoded[s]) for s in SPLITS},
                             "subjects": data.patients(), "vocab_size": len(data.vocab), "visit": visit}
    if data.token_cache:
        block["token_cache"] = data.token_cache
    if data.codes:
        block["codes"] = data.codes
    if data.coverage:  # what of each history the max_seq_len window keeps
        block["coverage"] = data.coverage
    facts: dict[str, Any] = {"data_fingerprint": data.fingerprint(held_out_ids), "data": block}
    if data.pretrain_cut:
        facts["pretraining_data"] = {"fingerprint": data.fingerprint(np.zeros(0, np.int64)),
                                     "patients_labelled": len(data.pretrain_cut.subjects),
                                     **data.pretrain_cut.identity(data.folder)}
    if data.vocab.bins:
        block["numeric_bins"] = {"bins": data.vocab.numeric_bins, "codes": len(data.vocab.bins.edges)}
    return facts


def label_facts(data: PreparedData, labels: str | None) -> dict[str, Any]:
    """Supervised runs: the labels' name or path, the examples and patients each fitting split used, and what
    happened to each label row ({} for self-supervised runs)."""
    if not data.labelled:
        return {}
    facts: dict[str, Any] = {"labels": labels, "labels_used": data.labels_used()}
    if data.label_report:
        facts["label_rows"] = data.label_report.to_dict()
    return facts
