"""An in-memory near-duplicate index that follows the KV protocol of ``near_dup`` step by step:
the reference for the NATS KV implementation, and what the benchmark measures.

Usage::

    index = NearDupIndex(LshBands(num_perm=128, threshold=0.5))
    index.admit("a1", "Write a function that merges intervals.")   # Decision(admitted=True)
    index.admit("b2", "Write a function that merges intervals")    # rejected, by_id='a1'
    index.release("a1")                                            # dropped later: free its keys
    len(index)                                                     # 0

A dict stands in for the bucket and a counter for its revisions; there are no races in one
process, so this shows the decisions, not the ordering argument (tests exercise ``decide`` for it).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from warriorcoder.arena.near_dup import (
    Candidate,
    Decision,
    LshBands,
    decide,
    encode_words,
    word_hashes,
)

__all__ = ["NearDupIndex"]


class NearDupIndex:
    def __init__(self, bands: LshBands) -> None:
        self.bands = bands
        self._members: defaultdict[str, list[str]] = defaultdict(list)  # band key -> ids
        self._words: dict[str, tuple[bytes, int]] = {}  # id -> (encoded words, revision)
        self._keys: dict[str, list[str]] = {}  # id -> its band keys
        self._rev = 0

    def __len__(self) -> int:
        return len(self._words)

    def admit(self, id: str, text: str) -> Decision:
        return self.admit_prepared(id, self.bands.keys(text), word_hashes(text))

    def admit_prepared(self, id: str, band_keys: list[str], words: np.ndarray) -> Decision:
        """``admit`` with the band keys and word hashes already computed (batch callers)."""
        for key in band_keys:  # step 2: band keys first
            self._members[key].append(id)
        self._keys[id] = band_keys
        self._rev += 1  # step 3: the words key commits, its revision is the rank
        self._words[id] = (encode_words(words), self._rev)
        decision = decide(words, self._rev, self.candidates(band_keys), threshold=self.threshold)
        if not decision.admitted:
            self.release(id)  # step 6: withdraw
        return decision

    def candidates(self, band_keys: list[str]) -> list[Candidate]:
        """Step 4: every id in the given bands, with its stored words and rank."""
        ids = {i for key in band_keys for i in self._members.get(key, ())}
        return [Candidate(i, *self._words.get(i, (None, 0))) for i in sorted(ids)]

    def release(self, id: str) -> None:
        for key in self._keys.pop(id, []):
            members = self._members[key]
            members.remove(id)
            if not members:
                del self._members[key]
        self._words.pop(id, None)

    @property
    def threshold(self) -> float:
        return self.bands.threshold
