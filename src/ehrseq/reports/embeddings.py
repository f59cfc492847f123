"""Code embeddings as run outputs: a safetensors file with its code index, nearest neighbours, a 2-D map.

Neighbours and the map are how a researcher checks that an embedding means something: codes that treat or
accompany one condition should sit together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ehrseq.data.vocab import Vocabulary
from ehrseq.reports.plots import _save, plt

EMBEDDINGS = "embeddings/codes.safetensors"
PLOT = "plots/code_embeddings.png"
TOP_CODES = 10  # most frequent codes listed with their neighbours
NEIGHBOURS = 5


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarities; an all-zero vector (possible after a ReLU) is similar to nothing."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def nearest_neighbours(vectors: np.ndarray, codes: Sequence[str], queries: Sequence[int],
                       k: int = NEIGHBOURS) -> dict[str, list[tuple[str, float]]]:
    """For each row index in `queries`, its `k` most cosine-similar other codes, most similar first."""
    sim = cosine_similarity(vectors)
    np.fill_diagonal(sim, -np.inf)
    return {codes[q]: [(codes[j], float(sim[q, j])) for j in np.argsort(-sim[q], kind="stable")[:k]]
            for q in queries}


def plot_code_embeddings(vectors: np.ndarray, codes: Sequence[str], counts: Sequence[int], path: Path,
                         title: str, groups: Mapping[str, str] | None = None,
                         legend: str = "coding system") -> Path:
    """First two principal components; colour by `groups` (code -> label), else by coding system."""
    centred = vectors - vectors.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T  # (N, 2)
    share = s[:2] ** 2 / max(float((s ** 2).sum()), 1e-12)
    labels = [groups.get(c, "other") if groups is not None else c.split("//")[0] for c in codes]
    names = sorted(set(labels) - {"other"}, key=lambda g: (len(g), g)) + (["other"] if "other" in labels else [])
    colours = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(8, 6), dpi=120)
    size = 8 + 40 * np.log1p(counts) / max(np.log1p(max(counts)), 1e-12)
    for i, name in enumerate(names):
        rows = [j for j, g in enumerate(labels) if g == name]
        ax.scatter(xy[rows, 0], xy[rows, 1], s=size[rows], label=name, alpha=0.75, linewidths=0,
                   color="lightgrey" if name == "other" else colours(i % 20))
    for name in set(labels) - {"other"}:  # each group's most frequent code, by name (codes come by frequency)
        j = labels.index(name)
        ax.annotate(codes[j], xy[j], fontsize=6, alpha=0.8)
    ax.set(xlabel=f"PC1 ({share[0]:.0%} of variance)", ylabel=f"PC2 ({share[1]:.0%} of variance)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(title=legend, fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


@dataclass
class EmbeddingReport:
    files: list[str]  # written under the folder, relative to it
    neighbours: dict[str, list[tuple[str, float]]]

    def markdown(self, counts: Mapping[str, int]) -> str:
        rows = "\n".join(f"| {code} | {counts[code]:,} | " + ", ".join(f"{n} ({s:.2f})" for n, s in near) + " |"
                         for code, near in self.neighbours.items())
        return ("\n## Code embeddings\n\nNearest neighbours (cosine) of the most frequent codes; all vectors in "
                f"`{EMBEDDINGS}`.\n\n| code | count | nearest |\n|---|---|---|\n{rows}\n")


def write_code_embeddings(vectors: torch.Tensor, vocab: Vocabulary, folder: Path, title: str,
                          groups: Mapping[str, str] | None = None, legend: str = "coding system") -> EmbeddingReport:
    """Writes the codes' rows of `vectors` (V, m) (special tokens dropped: row i is vocabulary id i + num_special)
    with the code list in the file's metadata (`codes`, JSON; one key, so the file's bytes are reproducible),
    and the 2-D map."""
    codes = vocab.itos[vocab.num_special:]
    rows = vectors[vocab.num_special:].detach().float().cpu().contiguous()
    (folder / EMBEDDINGS).parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": rows}, folder / EMBEDDINGS, metadata={"codes": json.dumps(codes)})
    array = rows.numpy()
    counts = [vocab.counts[c] for c in codes]
    plot_code_embeddings(array, codes, counts, folder / PLOT, title, groups, legend)
    return EmbeddingReport([EMBEDDINGS, PLOT],
                           nearest_neighbours(array, codes, range(min(TOP_CODES, len(codes)))))
