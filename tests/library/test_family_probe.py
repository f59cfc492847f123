"""The pretraining control's family probe: high when family vectors cluster, at chance when they do not, and
frequency-matched codes as the yardstick."""

import numpy as np
import pytest

from ehrseq.data.synthetic import FAMILY
from ehrseq.data.vocab import Vocabulary
from ehrseq.evaluation.family_probe import FamilyProbe, cooccurrence_vectors, family_probe, probe_vocabulary


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


def test_cooccurrence_vectors_are_the_positive_pmi_of_two_tokens_in_one_patient():
    # 4 patients over tokens 0..3: token 1 and 2 always together (in 2 of 4 patients), 3 in 3 patients, 0 in none
    codes, offsets = np.array([1, 2, 3, 1, 2, 3, 3]), np.array([0, 2, 5, 6, 7])
    ppmi = cooccurrence_vectors(codes, offsets, 4)  # (4, 4)
    assert ppmi[1, 2] == ppmi[2, 1] == pytest.approx(np.log((2 / 4) / (0.5 * 0.5)))
    assert ppmi[1, 3] == 0.0  # together in 1 of 4 patients, less than chance (0.5 x 0.75): clipped at 0
    assert (np.diag(ppmi) == 0).all() and (ppmi[0] == 0).all()


def test_planted_cooccurrence_is_found_in_the_counts_and_not_without_it():
    rng = np.random.default_rng(0)
    family = np.arange(10, 20)  # tokens 10..19: a family patient has 3 of them; every patient 5 of 80 others
    patients = [np.r_[rng.choice(np.r_[20:100], 5, replace=False),
                      rng.choice(family, 3, replace=False) if i % 3 == 0 else []] for i in range(3000)]
    offsets = np.r_[0, np.cumsum([len(p) for p in patients])]
    counts = {str(v): 1 for v in range(100)}
    names = [str(v) for v in range(100)]
    found = family_probe(cooccurrence_vectors(np.concatenate(patients).astype(int), offsets, 100), names, counts,
                         [str(v) for v in family])
    assert found.found and found.family_share > 0.9
    shuffled = [rng.choice(np.r_[10:100], len(p), replace=False) for p in patients]  # the same sizes, no family
    blind = family_probe(cooccurrence_vectors(np.concatenate(shuffled).astype(int), offsets, 100), names, counts,
                         [str(v) for v in family])
    assert blind.family_share < 0.3
