"""The pretraining control's family probe: high when family vectors cluster, at chance when they do not, and
frequency-matched codes as the yardstick."""

import numpy as np

from ehrseq.data.synthetic import FAMILY
from ehrseq.data.vocab import Vocabulary
from ehrseq.evaluation.family_probe import FamilyProbe, family_probe, probe_vocabulary


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


def test_a_models_token_vectors_are_probed_without_the_special_tokens():
    vectors, codes, counts = vocabulary(clustered=True)
    family = {f"F{i}": FAMILY[i] for i in range(10)}  # the synthetic family's names
    vocab = Vocabulary({family.get(c, c): n for c, n in counts.items()})
    rows = {family.get(c, c): v for c, v in zip(codes, vectors, strict=True)}
    specials = np.random.default_rng(1).normal(size=(len(Vocabulary.SPECIALS), 16)) * 3  # far from everything
    token_vectors = np.vstack([specials, [rows[c] for c in vocab.itos[len(Vocabulary.SPECIALS):]]])  # (V, C)
    probe = probe_vocabulary(token_vectors, vocab)
    assert probe == family_probe(vectors, [family.get(c, c) for c in codes], vocab.counts, FAMILY)
    assert probe.family_share == 1.0 and probe.chance == 0.1


def test_the_sentence_says_found_only_above_both_yardsticks():
    assert FamilyProbe(5, 0.6, 0.2, 0.1).sentence().endswith(": found.")
    assert FamilyProbe(5, 0.095, 0.2, 0.108).sentence().endswith(": not found.")
    assert FamilyProbe(5, 0.3, 0.4, 0.1).sentence().endswith(": not found.")  # rare codes drifting together
    assert "no frequency-matched codes" in FamilyProbe(5, 0.6, None, 0.1).sentence()
