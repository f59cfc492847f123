"""Did pretraining learn the family? The pretraining control's check on the code vectors themselves.

On the `family` presets 40 individually rare codes are planted together (2-4 per family patient); only their
co-occurrence, which unlabelled sequences reveal, says they belong together. A pretraining that learned it puts
each family code's nearest codes in the family. Rare codes drift together whatever their meaning (their vectors
get few updates), so the yardstick is a frequency-matched set: the non-family codes of similar counts. The share
of family codes among each family code's nearest neighbours, against that share for the matched codes among
theirs, says whether the family was found before any label is seen. The same probe on the patients' own
co-occurrence counts (positive PMI of two codes in one patient's tokens, no model) says whether the data a
pretraining read reveals the family at all: if it does and the model's vectors do not, the pretraining missed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ehrseq.data.synthetic import FAMILY
from ehrseq.data.vocab import Vocabulary


@dataclass(frozen=True)
class FamilyProbe:
    neighbours: int  # nearest codes looked at per code
    family_share: float  # mean share of family codes among a family code's nearest codes
    matched_share: float | None  # the same for the frequency-matched non-family codes among their own set (None:
    # fewer than two such codes)
    chance: float  # the family's share of the vocabulary's codes

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def found(self) -> bool:
        """The family's share is above both chance and the frequency-matched codes' share."""
        return self.family_share > max(self.matched_share or 0.0, self.chance)

    def sentence(self, cooccurrence: FamilyProbe | None = None) -> str:
        """For SUMMARY.md: the shares, whether the family stands out from its frequency-matched yardstick, and
        what the same probe gives on the patients' co-occurrence counts (`cooccurrence`), if given."""
        matched = "no frequency-matched codes" if self.matched_share is None else \
            f"{self.matched_share:.3f} for frequency-matched codes among their own set"
        counted = "" if cooccurrence is None else (
            f" The training patients' own co-occurrence counts (positive PMI, no model) give "
            f"{cooccurrence.family_share:.3f}: the data {'reveals' if cooccurrence.found else 'does not reveal'} "
            "the family.")
        return (f"Family probe (did pretraining put the planted family's codes together?): "
                f"{self.family_share:.3f} of each family code's {self.neighbours} nearest codes are in the family, "
                f"against {matched} and {self.chance:.3f} by chance: {'found' if self.found else 'not found'}."
                + counted)


def family_probe(vectors: np.ndarray, codes: Sequence[str], counts: Mapping[str, int], family: Sequence[str],
                 neighbours: int = 5) -> FamilyProbe | None:
    """`vectors` (V, C): one row per code of `codes` (the vocabulary's codes, in order); None when fewer than two
    family codes are in the vocabulary."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    in_family = set(family)
    members = np.array([c in in_family for c in codes])
    if members.sum() < 2:
        return None
    family_counts = [counts[c] for c, m in zip(codes, members, strict=True) if m]
    low, high = min(family_counts) / 2, max(family_counts) * 2
    matched = np.array([not m and low <= counts.get(c, 0) <= high for c, m in zip(codes, members, strict=True)])
    return FamilyProbe(neighbours, _share(unit, members, neighbours), _share(unit, matched, neighbours)
                       if matched.sum() >= 2 else None, float(members.mean()))


def probe_vocabulary(vectors: np.ndarray, vocab: Vocabulary, family: Sequence[str] = FAMILY,
                     neighbours: int = 5) -> FamilyProbe | None:
    """`family_probe` on a model's code vectors, `vectors` (V, C) one row per token of `vocab` (special tokens
    included: they are left out), with the training split's counts as frequencies."""
    first = len(Vocabulary.SPECIALS)
    return family_probe(vectors[first:], vocab.itos[first:], vocab.counts, family, neighbours)


def cooccurrence_vectors(codes: np.ndarray, offsets: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V, V) positive pointwise mutual information of two tokens in one patient: row v is token v's vector.
    `codes` (N,) token ids, patient i's tokens codes[offsets[i]:offsets[i + 1]] (a TokenArrays' layout). Dense:
    for the small vocabularies of the synthetic controls."""
    P = len(offsets) - 1
    patient = np.repeat(np.arange(P), np.diff(offsets))  # (N,)
    present = np.zeros((P, vocab_size), np.float32)  # (P, V) the patient has the token
    present[patient, codes] = 1.0
    together = present.T @ present  # (V, V) patients with both
    np.fill_diagonal(together, 0.0)
    share = present.mean(axis=0)  # (V,)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(together / P) - np.log(np.outer(share, share))
    return np.where(together > 0, np.maximum(pmi, 0.0), 0.0).astype(np.float32)


def _share(unit: np.ndarray, group: np.ndarray, neighbours: int) -> float:
    """Mean share of `group` among each group member's `neighbours` nearest codes (cosine; itself excluded)."""
    similarity = unit[group] @ unit.T  # (G, V)
    similarity[np.arange(int(group.sum())), np.flatnonzero(group)] = -np.inf
    nearest = np.argsort(-similarity, axis=1)[:, :neighbours]  # (G, neighbours)
    return float(group[nearest].mean())
