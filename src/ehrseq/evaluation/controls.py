"""A synthetic control's known answer beside a run's: the oracles and the order probe.

The generator writes each labelled patient's true risk (ehrseq.data.synthetic), so the held-out figures of a
model can be read against the best any model could reach on the same subjects (`oracle`), the same risk without
the planted order term (`oracle_order_blind`), and the best an order-blind model can do (`oracle_order_marginal`:
the risk averaged over the order term). The order probe asks whether the model itself scores A-then-B above
B-then-A by the planted effect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ehrseq.data.supervised import LabelledSplit, oracle_risks
from ehrseq.data.synthetic import SyntheticParams
from ehrseq.evaluation.order_probe import logit, order_probe
from ehrseq.evaluation.predictions import BinaryPredictions, SurvivalPredictions

ORACLES = {"oracle": "true_risk", "oracle_order_blind": "true_risk_order_blind",
           "oracle_order_marginal": "true_risk_order_marginal"}  # summary.json field -> the oracle's column


def oracle_facts(dataset: Path, task: str, held_out: BinaryPredictions | SurvivalPredictions) -> dict[str, Any]:
    """Each oracle's true risk scored like a model on the held-out subjects: {field: its metrics}, for the oracle
    columns the dataset has ({} for real data, which has none)."""
    facts = {}
    for name, column in ORACLES.items():
        risks = oracle_risks(dataset, task, held_out.subject_ids, column)
        if risks is not None:
            oracle = (replace(held_out, probabilities=risks) if isinstance(held_out, BinaryPredictions)
                      else replace(held_out, risks=risks))
            facts[name] = oracle.metrics()
    return facts


def order_probe_facts(held_out: LabelledSplit, score: Callable[[LabelledSplit], np.ndarray], kind: str,
                      params: SyntheticParams) -> dict[str, Any]:
    """The A-first vs B-first probe on the held-out patients, its true answer from the generator's order effect.
    `score` gives probabilities (binary: probed as log-odds) or risks (survival)."""
    as_logits = logit if kind == "binary" else np.asarray
    probe = order_probe(held_out, lambda s: as_logits(score(s)), params.order_effect, params.order_window,
                        params.pattern)
    return {"order_probe": probe.to_dict()}
