"""Which FAISS index a catalog gets, and why.

FAISS's own guidelines ("Guidelines to choose an index" in the FAISS wiki) drive
the choice:

- up to ``EXACT_MAX`` vectors, exact search (``IDMap2,Flat``): it is fast enough
  and its recall is 1;
- beyond, an inverted file with ``nlist`` about 4 x sqrt(N) lists (the wiki's
  4-16 x sqrt(N)), trained on 50 points per list (its 30-256), its vectors
  product-quantized. The **quality** profile (the default) re-ranks the PQ
  candidates with 8-bit scalar-quantized copies of the vectors
  (``IVF...,PQ..x8np,Refine(SQ8)``; ``np``: no polysemous training, which plain
  IVF searches never use and which dominated training time): PQ alone stops far
  below 0.95 recall@10 on CLIP-like data, whatever nprobe. The **lean** profile
  keeps only the PQ codes, rotated and reduced to 448 dimensions by OPQ first
  (``OPQ56_448,IVF...,PQ56x8np``: 56 + 8 bytes per vector; 10 OPQ
  iterations on at most 32,768 vectors, where FAISS's default 50 took most of a
  build), for catalogs that must fit in
  less than 80 bytes per vector;
- from ``HNSW_QUANTIZER_MIN`` vectors the coarse quantizer itself is an HNSW graph
  (``IVF..._HNSW32``), as the wiki advises from 1M-10M vectors, so assigning a
  query to its lists stays fast with 16k-1M lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from runtime.errors import ConfigError

EXACT_MAX = 100_000
HNSW_QUANTIZER_MIN = 10_000_000
POINTS_PER_LIST = 50  # FAISS warns below 39 and samples down above 256
PROFILES = ("quality", "lean")
LEAN_DIM = 448  # lean: OPQ to 448 dimensions, 56 one-byte codes (72 bytes with the id)


@dataclass(frozen=True)
class IndexChoice:
    """A factory string, how to train it, and the reasons, for the manifest."""

    factory: str
    train_size: int
    nlist: int | None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "factory": self.factory,
            "train_size": self.train_size,
            "nlist": self.nlist,
            "reasons": list(self.reasons),
        }


def pq_size(dim: int, target: int) -> int:
    """The largest number of PQ sub-quantizers <= ``target`` that divides ``dim``."""
    for m in range(min(target, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


def choose_index(count: int, dim: int, profile: str = "quality") -> IndexChoice:
    """The index for ``count`` vectors of ``dim`` dimensions (see the module docstring)."""
    if profile not in PROFILES:
        raise ConfigError(f"index profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    if count < 1:
        raise ConfigError("an index needs at least one vector")
    if count <= EXACT_MAX and profile == "quality":
        return IndexChoice(
            "IDMap2,Flat",
            0,
            None,
            [f"{count:,} vectors <= {EXACT_MAX:,}: exact search (recall 1, a few ms per query)"],
        )
    nlist = max(1, int(4 * math.sqrt(count)))
    # Keep at least POINTS_PER_LIST training points per list even for small lean indexes.
    nlist = min(nlist, max(1, count // POINTS_PER_LIST))
    train = min(count, POINTS_PER_LIST * nlist)
    reasons = [
        f"{count:,} vectors: an inverted file with nlist = 4 x sqrt(N) = {nlist:,} lists, "
        f"trained on {train:,} vectors ({train // nlist} per list)"
    ]
    coarse = f"IVF{nlist}"
    if count >= HNSW_QUANTIZER_MIN:
        coarse = f"IVF{nlist}_HNSW32"
        reasons.append(
            f"{count:,} >= {HNSW_QUANTIZER_MIN:,}: an HNSW32 graph finds the nearest lists"
        )
    if profile == "quality":
        m = pq_size(dim, max(1, dim // 8))
        factory = f"{coarse},PQ{m}x8np,Refine(SQ8)"
        reasons.append(
            f"quality: PQ{m} codes ({m} bytes) find candidates, 8-bit scalar-quantized "
            f"vectors ({dim} bytes) re-rank them: about {m + dim + 8} bytes per vector"
        )
    else:
        if dim >= LEAN_DIM:  # OPQ also reduces the dimension: 56 codes of 8 dimensions
            m, rotation = LEAN_DIM // 8, f"OPQ{LEAN_DIM // 8}_{LEAN_DIM}"
        else:
            m = pq_size(dim, max(1, dim // 4))
            rotation = f"OPQ{m}"
        factory = f"{rotation},{coarse},PQ{m}x8np"
        reasons.append(
            f"lean: OPQ-rotated PQ{m} codes only, about {m + 8} bytes per vector plus the "
            "lists' centroids (lower recall; see cnclip index eval)"
        )
    return IndexChoice(factory, train, nlist, reasons)
