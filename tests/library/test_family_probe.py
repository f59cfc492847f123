"""The pretraining control's family probe: high when family vectors cluster, at chance when they do not, and
frequency-matched codes as the yardstick."""

import numpy as np

from ehrseq.evaluation.family_probe import family_probe


def vocabulary(clustered: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = [f"F{i}" for i in range(10)] + [f"R{i}" for i in range(30)] + [f"C{i}" for i in range(60)]
    counts = {c: 600 if c[0] in "FR" else 50_000 for c in codes}
    vectors = rng.normal(size=(len(codes), 16))
    if clustered:
        vectors[:10] = rng.normal(size=16) * 3 + rng.normal(size=(10, 16)) * 0.3  # one direction for the family
    return vectors, codes, counts


def test_a_learned_family_is_found_and_an_unlearned_one_sits_at_chance():
    family = [f"F{i}" for i in range(10)]
    found = family_probe(*vocabulary(clustered=True), family)
    assert found.family_share == 1.0 and found.chance == 0.1
    blind = family_probe(*vocabulary(clustered=False), family)
    assert blind.family_share < 0.3 and blind.matched_share < 0.6  # R codes (same counts) are the yardstick
    assert family_probe(*vocabulary(clustered=True), ["F0", "missing"]) is None
