"""The order probe: does a model's score depend on whether code A came before code B?

A held-out metric says how well a model ranks patients, not what it learned. On a synthetic cohort the
planted order effect is known (ehrseq.data.synthetic: A first recorded before B, within `order_window` visits,
adds `order_effect` to the log hazard; B first adds nothing), so the model's own answer can be checked against
it. For every held-out patient whose history (already cut at the prediction time) holds both A and B, two
counterfactual copies are scored: the visits of the two onsets (the first A and the first B) keep their
places, and the codes there are set to A then B ("A first") or B then A ("B first"). Every later record of A
and B, and everything else, stays as it was.

Both copies hold the same codes the same number of times at the same visits, so a model that only counts codes
scores them alike (up to how much it weighs recent visits), while the true log hazard differs by `order_effect`
where the onsets are within `order_window` visits (0 for the `presence` control). For the `transition` pattern
the swapped visits are the planted pair instead: a visit holding one of A and B alone, followed by the next visit
holding the other alone (A and B otherwise recur together); its true shift is `order_effect` for every patient
that has the pair. The shift is reported on the
model's score scale: log-odds for binary models, log relative hazard for survival ones; for rare outcomes the
two are close to the true log-HR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from ehrseq.data.history_arrays import HistoryArrays
from ehrseq.data.supervised import LabelledSplit
from ehrseq.data.synthetic import PROGRESSION_A, PROGRESSION_B

Scorer = Callable[[LabelledSplit], np.ndarray]  # a split -> (S,) logits or log-risks, row-aligned
NONE = -1  # no such visit


@dataclass(frozen=True)
class OrderProbe:
    mean_shift: float  # mean over patients of score(A first) - score(B first)
    share_positive: float  # share of patients whose shift is > 0
    true_log_hr: float  # the generator's answer: the planted order effect, averaged over the probed patients
    n: int  # patients probed (those holding both A and B)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def sentence(self) -> str:
        return (f"Order probe (the onsets of A and B swapped, {self.n} held-out patients holding both): mean score "
                f"shift {self.mean_shift:+.3f} (true log-HR {self.true_log_hr:+.3f}), positive for "
                f"{100 * self.share_positive:.0f}% of patients.")


def _visit_holds(h: HistoryArrays, code: str) -> np.ndarray:
    """(V,) bool: whether each visit (all patients' visits, in order) holds `code`."""
    holds = np.zeros(len(h.visit_times), bool)
    if code in h.names:
        events = np.asarray(h.event_codes) == list(h.names).index(code)
        holds[(np.asarray(h.visit_offsets[:-1])[h.event_rows()] + h.event_visits)[events]] = True
    return holds


def _first_visit(h: HistoryArrays, visits: np.ndarray) -> np.ndarray:
    """(P,) each patient's first visit (counted within the patient) among the flagged `visits` (V,), or NONE."""
    rows = np.repeat(np.arange(len(h)), np.diff(h.visit_offsets))
    first = np.full(len(h), np.iinfo(np.int64).max)
    index = np.arange(len(rows)) - np.asarray(h.visit_offsets[:-1])[rows]
    np.minimum.at(first, rows[visits], index[visits])
    return np.where(first == np.iinfo(np.int64).max, NONE, first)


def onsets(h: HistoryArrays, code_a: str = PROGRESSION_A, code_b: str = PROGRESSION_B) -> np.ndarray:
    """(P, 2) each patient's visits first holding A and first holding B; NONE unless its history holds both."""
    found = np.stack([_first_visit(h, _visit_holds(h, code)) for code in (code_a, code_b)], 1)
    found[(found == NONE).any(1)] = NONE
    return found


def transition(h: HistoryArrays, code_a: str = PROGRESSION_A, code_b: str = PROGRESSION_B) -> np.ndarray:
    """(P, 2) each patient's first two consecutive visits, one holding A without B and the next B without A (or
    the mirror): the `transition` pattern's pair; NONE where there is none."""
    a, b = _visit_holds(h, code_a), _visit_holds(h, code_b)
    alone_a, alone_b = a & ~b, b & ~a
    pair = np.zeros(len(a), bool)
    pair[:-1] = (alone_a[:-1] & alone_b[1:]) | (alone_b[:-1] & alone_a[1:])
    pair[np.asarray(h.visit_offsets[1:]) - 1] = False  # a patient's last visit has no next one
    first = _first_visit(h, pair)
    return np.where(first[:, None] == NONE, NONE, first[:, None] + np.array([0, 1]))


def swapped_histories(h: HistoryArrays, code_a: str = PROGRESSION_A, code_b: str = PROGRESSION_B,
                      pattern: str = "onset") -> tuple[np.ndarray, HistoryArrays, HistoryArrays]:
    """(the rows of the patients holding both A and B (for `transition`, the pair), their "A first" copies,
    their "B first" copies).

    A visit holding both onsets at once has no order to swap: such patients are left out too. In each copy the
    two visits lose their A and B and gain, at their end, the code the copy puts there."""
    found = (transition if pattern == "transition" else onsets)(h, code_a, code_b)
    rows = np.flatnonzero((found[:, 0] != NONE) & (found[:, 0] != found[:, 1]))
    sub = h.select(rows)
    early, late = np.sort(found[rows], axis=1).T  # (R,) each
    names = list(h.names)
    ids = [names.index(code) if code in names else NONE for code in (code_a, code_b)]
    row = sub.event_rows()
    at_pair = (sub.event_visits == early[row]) | (sub.event_visits == late[row])
    kept = ~(np.isin(sub.event_codes, ids) & at_pair)

    def with_onsets(first: int, second: int) -> HistoryArrays:
        n = len(rows)
        new_rows = np.r_[row[kept], np.arange(n), np.arange(n)]
        new_visits = np.r_[sub.event_visits[kept], early, late].astype(np.int32)
        new_codes = np.r_[sub.event_codes[kept], np.full(n, first), np.full(n, second)].astype(np.int32)
        order = np.lexsort((np.r_[np.zeros(kept.sum(), bool), np.ones(2 * n, bool)], new_visits, new_rows))
        offsets = np.r_[0, np.cumsum(np.bincount(new_rows, minlength=n))].astype(np.int64)
        return replace(sub, event_offsets=offsets, event_codes=new_codes[order], event_visits=new_visits[order])

    return rows, with_onsets(*ids), with_onsets(*ids[::-1])


def order_probe(split: LabelledSplit, score: Scorer, order_effect: float, order_window: int,
                pattern: str = "onset") -> OrderProbe:
    """Scores both copies of every patient holding A and B (same prediction times and labels as in `split`, so
    any model's scoring applies) and summarises the shifts against the true ones."""
    rows, *copies = swapped_histories(split.histories, pattern=pattern)
    if not len(rows):
        raise ValueError("the order probe needs held-out patients holding both A and B at different visits")
    probed = split.take(rows)
    a_first, b_first = (score(replace(probed, histories=copy)) for copy in copies)
    shift = np.asarray(a_first, dtype=float) - np.asarray(b_first, dtype=float)
    if pattern == "transition":
        true_shift = np.full(len(rows), order_effect)
    else:
        gaps = np.abs(np.subtract(*onsets(split.histories)[rows].T))
        true_shift = order_effect * (gaps <= order_window)
    return OrderProbe(float(shift.mean()), float((shift > 0).mean()), float(true_shift.mean()), len(rows))


def logit(probabilities: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1 so a saturated model gives finite shifts."""
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)
