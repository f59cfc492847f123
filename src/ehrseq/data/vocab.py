"""Code <-> integer id mapping, with BERT-style special tokens at fixed ids.

Ids are sorted by descending count then code, so the same patients always give the same vocabulary and
a saved model's embedding rows stay meaningful. Counts are saved too, for reports and frequency cut-offs.
"""

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ehrseq.data.patients import Patient


class Vocabulary:
    """Special tokens take ids 0-4; codes follow from id `num_special`; unknown codes map to UNK."""

    PAD, CLS, SEP, MASK, UNK = range(5)
    SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")

    def __init__(self, counts: dict[str, int]) -> None:
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        self.counts = dict(ordered)
        self.itos = [*self.SPECIALS, *self.counts]
        self.stoi = {token: i for i, token in enumerate(self.itos)}

    @classmethod
    def build(cls, patients: Iterable[Patient], min_count: int = 1) -> "Vocabulary":
        """Count every code occurrence across all visits, and each static code once per patient; keep those seen
        at least `min_count` times."""
        counts = Counter(code for patient in patients for visit in patient.visits for code in visit.codes)
        counts.update(code for patient in patients for code in patient.static)
        return cls({code: n for code, n in counts.items() if n >= min_count})

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.counts == other.counts

    @property
    def num_special(self) -> int:
        return len(self.SPECIALS)

    def encode(self, code: str) -> int:
        return self.stoi.get(code, self.UNK)

    def decode(self, i: int) -> str:
        return self.itos[i]

    def to_json(self) -> str:
        return json.dumps({"specials": list(self.SPECIALS), "counts": self.counts})

    @classmethod
    def from_json(cls, s: str) -> "Vocabulary":
        obj = json.loads(s)
        if obj.get("specials") != list(cls.SPECIALS):
            raise ValueError(f"vocabulary has specials {obj.get('specials')}, expected {list(cls.SPECIALS)}")
        return cls(obj["counts"])

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        return cls.from_json(Path(path).read_text())
