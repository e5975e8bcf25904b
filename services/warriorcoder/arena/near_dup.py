"""Near-duplicate keys: MinHash over word unigrams, cut into LSH bands (PAPER.md: 128
permutations, Jaccard 0.5).

Usage::

    bands = LshBands(num_perm=128, threshold=0.5)
    keys = bands.keys("Write a function that ...")   # one key per band

Two instructions whose estimated Jaccard similarity is above the threshold share at least one
band key with high probability; the challenger stores band keys in a NATS KV bucket, created
atomically, so the first replica to claim a key admits its instruction and every later near-
duplicate finds the key taken.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param

__all__ = ["LshBands", "unigrams"]

_WORD_RE = re.compile(r"\S+")


def unigrams(text: str) -> set[str]:
    """Word unigrams as the paper's de-dup takes them: '.' removed, newlines as spaces."""
    cleaned = text.replace(".", "").replace("\n", " ").lower()
    return set(_WORD_RE.findall(cleaned))


class LshBands:
    def __init__(self, *, num_perm: int = 128, threshold: float = 0.5, seed: int = 1) -> None:
        self.num_perm = num_perm
        self.threshold = threshold
        self.seed = seed
        # datasketch's choice of (bands, rows) minimising false positives + negatives
        self.bands, self.rows = _optimal_param(threshold, num_perm, 0.5, 0.5)

    def signature(self, text: str) -> np.ndarray:
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([w.encode() for w in unigrams(text)])
        return m.hashvalues

    def keys(self, text: str) -> list[str]:
        """One key per band: ``<band>.<digest of the band's hash values>``."""
        hv = self.signature(text)
        out = []
        for b in range(self.bands):
            chunk = hv[b * self.rows : (b + 1) * self.rows].astype(np.uint64).tobytes()
            out.append(f"{b:02d}.{hashlib.blake2b(chunk, digest_size=12).hexdigest()}")
        return out

    @staticmethod
    def jaccard(a: str, b: str) -> float:
        """Exact Jaccard similarity of the unigram sets (for tests and diagnostics)."""
        sa, sb = unigrams(a), unigrams(b)
        return len(sa & sb) / len(sa | sb) if sa | sb else 1.0
