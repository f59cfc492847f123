"""Code <-> integer id mapping, with BERT-style special tokens at fixed ids.

Ids are sorted by descending count then code, so the same patients always give the same vocabulary and
a saved model's embedding rows stay meaningful. Counts are saved too, for reports and frequency cut-offs.
Where numeric values are binned into tokens (ehrseq.data.numeric), the bins travel with the vocabulary: a
model fine-tuned from it must bin alike.
"""

import json
from pathlib import Path

from ehrseq.data.numeric import NumericBins


class Vocabulary:
    """Special tokens take ids 0-4; codes follow from id `num_special`; unknown codes map to UNK."""

    PAD, CLS, SEP, MASK, UNK = range(5)
    SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")

    def __init__(self, counts: dict[str, int], bins: NumericBins | None = None) -> None:
        self.bins = bins  # how numeric values became tokens (None: they did not)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        self.counts = dict(ordered)
        self.itos = [*self.SPECIALS, *self.counts]
        self.stoi = {token: i for i, token in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.counts == other.counts and self.bins == other.bins

    @property
    def numeric_bins(self) -> int:
        """data.numeric_bins of the data it was built from (0: numeric values not tokenised)."""
        return self.bins.num_bins if self.bins else 0

    @property
    def num_special(self) -> int:
        return len(self.SPECIALS)

    def encode(self, code: str) -> int:
        return self.stoi.get(code, self.UNK)

    def decode(self, i: int) -> str:
        return self.itos[i]

    def to_json(self) -> str:
        obj = {"specials": list(self.SPECIALS), "counts": self.counts}
        if self.bins:  # (absent when off, so vocabularies and cache keys from before bins are unchanged)
            obj["numeric_bins"] = self.bins.to_dict()
        return json.dumps(obj)

    @classmethod
    def from_json(cls, s: str) -> "Vocabulary":
        obj = json.loads(s)
        if obj.get("specials") != list(cls.SPECIALS):
            raise ValueError(f"vocabulary has specials {obj.get('specials')}, expected {list(cls.SPECIALS)}")
        bins = obj.get("numeric_bins")
        return cls(obj["counts"], NumericBins.from_dict(bins) if bins else None)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls.from_json(Path(path).read_text())
