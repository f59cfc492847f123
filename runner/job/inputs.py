"""What every rank reads before it trains, alike: the base weights and the data, each checked. Rank 0 (job/run.py)
and the other torchrun ranks (job/distributed.py) both read their inputs here (and resume through job/resume.py),
so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ehrseq.data.prepared import PreparedData
from ehrseq.data.token_cache import CacheRemote
from ehrseq.training import distributed
from ehrseq_runner.job.prepare import prepare_data
from ehrseq_runner.job.pretrained import (
    Pretrained,
    check_no_leakage,
    check_positions,
    check_pretraining_data,
    check_visit,
    fetch_pretrained,
)
from ehrseq_runner.spec.job_spec import JobSpec


def read_inputs(spec: JobSpec, cache_dir: Path, remote: CacheRemote | None = None,
                warn: Callable[[str], None] | None = None) -> tuple[Pretrained | None, PreparedData]:
    """The base weights (model.init_from) and the data, each checked: an InputError here stores nothing. Rank 0
    prepares the data first (filling the dataset cache under `cache_dir`, and `remote`), the other ranks reuse it."""
    pretrained = fetch_pretrained(spec.model.init_from, spec.storage.endpoint_url, spec.model.kind) \
        if spec.model.init_from else None
    if pretrained:
        check_positions(pretrained, spec.model.positions)
        check_visit(pretrained, spec.data.visit, spec.data.admission.model_dump())
        check_no_leakage(pretrained, spec.seed, spec.data.model_dump())
    with distributed.rank_zero_first():
        data = prepare_data(spec, cache_dir, vocab=pretrained.vocab if pretrained else None, remote=remote,
                            warn=warn)
    if pretrained:
        check_pretraining_data(pretrained, spec, data.fingerprint(np.zeros(0, np.int64)), data.identity,
                               data.folder)
    return pretrained, data
