"""Patient objects as the token cache's whole-history arrays, and back: the bridge tests use to build inputs by
hand and to prove the cache's arrays equal the per-patient reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ehrseq.data.history_arrays import NO_BIRTH, HistoryArrays
from ehrseq.data.patients import Patient
from ehrseq.data.vocab import Vocabulary


def _us(times: list) -> np.ndarray:
    return np.array([np.datetime64(t, "us").astype(np.int64) for t in times], np.int64)


def history_arrays(patients: Sequence[Patient], names: Sequence[str] | None = None) -> HistoryArrays:
    """`patients` as HistoryArrays; codes are ids in `names` (default: the specials, then every code sorted)."""
    if names is None:
        codes = {c for p in patients for v in p.visits for c in v.codes} | {c for p in patients for c in p.static}
        names = [*Vocabulary.SPECIALS, *sorted(codes)]
    ids = {name: i for i, name in enumerate(names)}
    encode = lambda codes: [ids.get(c, Vocabulary.UNK) for c in codes]  # noqa: E731
    visits = [v for p in patients for v in p.visits]
    return HistoryArrays(
        births=np.array([NO_BIRTH if p.birth is None else _us([p.birth])[0] for p in patients], np.int64),
        visit_offsets=np.r_[0, np.cumsum([len(p.visits) for p in patients])].astype(np.int64),
        visit_times=_us([v.time for v in visits]),
        event_offsets=np.r_[0, np.cumsum([sum(len(v.codes) for v in p.visits) for p in patients])].astype(np.int64),
        event_codes=np.array([i for v in visits for i in encode(v.codes)], np.int32),
        event_visits=np.array([j for p in patients for j, v in enumerate(p.visits) for _ in v.codes], np.int32),
        static_offsets=np.r_[0, np.cumsum([len(p.static) for p in patients])].astype(np.int64),
        static_codes=np.array([i for p in patients for i in encode(p.static)], np.int32),
        names=list(names))


def visit_codes(h: HistoryArrays, row: int) -> list[tuple[str, ...]]:
    """Patient `row`'s visits as tuples of code names, in order."""
    a, b = h.event_offsets[row], h.event_offsets[row + 1]
    visits = h.event_visits[a:b]
    return [tuple(h.names[c] for c in h.event_codes[a:b][visits == j])
            for j in range(h.visit_offsets[row + 1] - h.visit_offsets[row])]


def assert_equal_histories(got: HistoryArrays, patients: Sequence[Patient], vocab: Vocabulary) -> None:
    """The cache's histories hold exactly the patients' births, visit times, visit codes and static codes."""
    want = history_arrays(patients, vocab.itos)
    assert len(got) == len(want)
    for name in ("births", "visit_offsets", "visit_times", "event_offsets", "event_codes", "event_visits",
                 "static_offsets", "static_codes"):
        assert np.array_equal(np.asarray(getattr(got, name)), getattr(want, name)), name
