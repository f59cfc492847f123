"""The order probe: does a model's score depend on whether code A came before code B?

A held-out metric says how well a model ranks patients, not what it learned. On a synthetic cohort the
planted order effect is known (ehrseq.data.synthetic: A then B within a few visits adds `order_effect` to the
log hazard; B then A adds nothing), so the model's own answer can be checked against it. For every held-out
patient two counterfactual copies of its history (already cut at the prediction time) are scored:

- every A and B code is removed from the history (a visit left empty is dropped),
- then A is added to the second-to-last visit and B to the last one ("A then B"), or the reverse ("B then A").

Nothing else changes, and both copies hold A and B once each, so a model that only counts codes scores them
alike (up to how much it weighs recent visits), while the true log hazard differs by exactly `order_effect`
(0 for the `presence` control). The shift is reported on the model's score scale: log-odds for binary
models, log relative hazard for survival ones; for rare outcomes the two are close to the true log-HR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from ehrseq.data.patients import Patient
from ehrseq.data.supervised import LabelledSplit
from ehrseq.data.synthetic import PROGRESSION_A, PROGRESSION_B

Scorer = Callable[[LabelledSplit], np.ndarray]  # a split -> (S,) logits or log-risks, row-aligned


@dataclass(frozen=True)
class OrderProbe:
    mean_shift: float  # mean over patients of score(A then B) - score(B then A)
    share_positive: float  # share of patients whose shift is > 0
    true_log_hr: float  # the generator's answer: the planted order effect
    n: int  # patients probed (those with at least two visits)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def sentence(self) -> str:
        return (f"Order probe (A then B vs B then A at the last two visits, {self.n} held-out patients): mean score "
                f"shift {self.mean_shift:+.3f} (true log-HR {self.true_log_hr:+.3f}), positive for "
                f"{100 * self.share_positive:.0f}% of patients.")


def swapped_histories(patient: Patient, code_a: str = PROGRESSION_A,
                      code_b: str = PROGRESSION_B) -> tuple[Patient, Patient] | None:
    """The "A then B" and "B then A" copies of `patient`, or None when it has fewer than two visits."""
    visits = [replace(v, codes=kept) for v in patient.visits
              if (kept := tuple(c for c in v.codes if c not in (code_a, code_b)))]
    if len(visits) < 2:
        return None

    def with_codes(first: str, second: str) -> Patient:
        last_two = [replace(visits[-2], codes=(*visits[-2].codes, first)),
                    replace(visits[-1], codes=(*visits[-1].codes, second))]
        return replace(patient, visits=(*visits[:-2], *last_two))

    return with_codes(code_a, code_b), with_codes(code_b, code_a)


def order_probe(split: LabelledSplit, score: Scorer, true_log_hr: float) -> OrderProbe:
    """Scores both copies of every patient with two or more visits (same prediction times and labels as in
    `split`, so any model's scoring applies) and summarises the shifts."""
    pairs = [swapped_histories(p) for p in split.patients]
    rows = [i for i, pair in enumerate(pairs) if pair is not None]
    if not rows:
        raise ValueError("the order probe needs patients with at least two visits")
    a_then_b, b_then_a = (score(LabelledSplit([pairs[i][which] for i in rows], split.prediction_times[rows],
                                              split.labels[rows], split.times[rows])) for which in (0, 1))
    shift = np.asarray(a_then_b, dtype=float) - np.asarray(b_then_a, dtype=float)
    return OrderProbe(float(shift.mean()), float((shift > 0).mean()), float(true_log_hr), len(rows))


def logit(probabilities: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1 so a saturated model gives finite shifts."""
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)
