"""Near-duplicate detection: MinHash over word unigrams cut into LSH bands (PAPER.md: 128
permutations, Jaccard 0.5), with every band collision verified before it rejects.

Usage::

    bands = LshBands(num_perm=128, threshold=0.5)
    keys = bands.keys("Write a function that ...")       # one key per band, as before
    own = word_hashes("Write a function that ...")       # 4 bytes per distinct word
    stored = encode_words(own)                           # what the KV keeps per instruction
    decision = decide(own, 7, [Candidate("c1", stored, 3)], threshold=0.5)
    decision.admitted, decision.by_id, decision.jaccard  # False, 'c1', 1.0
    sig = bands.signature("Write a function that ...")   # 128 uint32 hash values
    estimated_jaccard(sig, decode_signature(encode_signature(sig)))  # 1.0; 512 bytes encoded

A band collision is only a *candidate*: two instructions at Jaccard 0.2 share one of the 25 bands
(5 rows each) with probability ~0.8% (25 x 0.2^5), so an index of thousands of admitted
instructions would reject almost every new one. A candidate rejects the newcomer only when their
Jaccard similarity is >= the threshold, as text-dedup and NeMo Curator (``false_positive_check``)
verify their LSH buckets.

The similarity is computed exactly, from each instruction's distinct words stored as sorted 32-bit
hashes (``word_hashes``: 4 bytes per word, ~130 bytes for a typical instruction), not estimated
from the 128-value signature (512 bytes). The estimate is binomial (standard deviation 0.043 at
Jaccard 0.4), so a pair at 0.35 reads >= 0.5 with probability ~1e-4; over an index of 100k
instructions, whose pairs reach 0.3-0.4 by shared phrasing ("write a python function that ...
a list of ..."), that rejects new instructions on pairs below the threshold (benchmarks/README.md,
at 100k: 2.0% of them on a pair below 0.4, 27% on a pair in [0.4, 0.5)). Exact verification
rejects nothing below the threshold. ``encode_signature``/``estimated_jaccard``
remain for diagnostics and the benchmark's comparison.

Protocol in a NATS KV bucket (racing replicas, restarts)
--------------------------------------------------------
Keys of an admitted instruction ``<id>`` (the challenge id, hex)::

    exact.<sha256 of the normalised text>   value <id>      (created atomically, as today)
    lsh.<band key>                          BandMembers: the ids in this band (one key per band,
                                            shared by its members; compare-and-set)
    words.<id>                              encode_words(word_hashes(text))

Admission of ``<id>`` (``stages.challenger.filters.DedupIndex``):

1. ``create`` the exact key; if it exists: exact duplicate.
2. Add ``<id>`` to each of its 25 ``lsh.<band key>`` (compare-and-set, concurrently; already a
   member: no write).
3. ``put`` ``words.<id>`` only once every addition is acknowledged. Its revision (the stream
   sequence, unique and increasing in the bucket) is the instruction's *rank*; this key is the
   commit point.
4. ``get`` the 25 band keys (one batched direct get where the bucket allows direct gets, else
   concurrently), drop ``<id>`` itself from their members, and ``get`` ``words.<member>`` of the
   rest (likewise; a replica caches them, they never change).
5. ``decide(own_words, own_rank, candidates)``: a candidate rejects the newcomer iff its words are
   present, its rank is LOWER than the newcomer's, and the Jaccard similarity is >= the threshold.
   A candidate without words has not committed: its rank will be higher than ours, and it will
   see us (below). A candidate with a higher rank is later than us: it defers to us.
6. Rejected: delete ``words.<id>``, remove ``<id>`` from its bands (compare-and-set; a band left
   empty is deleted) and delete the exact key, so a withdrawn instruction blocks nothing.
   Admitted: keep them.

Every step is a fixed number of single-key operations (25 compare-and-sets, one put, 25 gets, the
candidates' words): no listing of the bucket, so an admission costs the same at 100k admitted
instructions as at 1k, apart from the candidates themselves and the size of a popular band's
member list (a band shared by a tenth of all instructions, as templated phrasing makes, holds a
tenth of all ids). A compare-and-set starts from the value this process last saw (a band not
seen yet: absent), so a band nobody else touched since costs one conditional write.

Why two racing near-duplicates A and B are never both admitted: say A's ``words`` write got the
lower revision (revisions are totally ordered). A's band additions were acknowledged before its
``words`` write, and B reads its bands after its own ``words`` write, later than A's in the
stream; a compare-and-set never drops a member it did not mean to (each write is computed from
the latest value, or fails and is retried), so B's read of every band they share lists A, and B's
``get`` finds ``words.A``. The similarity is symmetric and deterministic, so B computes the same
Jaccard >= threshold with the lower-ranked A and withdraws. A never rejects itself because of B
(B ranks higher). If A withdraws (it lost to an earlier C) and its words are gone before B looks,
B is judged against C directly and still sees C if it is C's near-duplicate; if B looks before
A's words are gone, B is rejected because of A: a rare extra rejection in a race, never an extra
admission. The atomic ``create`` of the exact key keeps its guarantee for identical texts.

Why a restart keeps the index: everything is in the bucket (file storage, replicated on a cluster);
the decision reads only keys, values and revisions, which survive restarts. A replica that dies
between steps 2 and 3 leaves its id in bands without words, ignored by everyone (uncommitted).

Releasing (issue 9 item 6): an instruction admitted here but dropped later (quality gate, budget
exhausted, scorer failure) or whose publish fails must delete its words, leave its bands and
delete its exact key, or it blocks its text and its near-duplicates forever. Delete the exact key
only if it still names ``<id>`` (``kv.delete(key, last=revision)``), so a release never frees
another claim.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param

__all__ = [
    "Candidate",
    "Decision",
    "LshBands",
    "decide",
    "decode_signature",
    "decode_words",
    "encode_signature",
    "encode_words",
    "estimated_jaccard",
    "signature_bytes",
    "unigrams",
    "word_hashes",
    "words_jaccard",
]

_WORD_RE = re.compile(r"\S+")
# datasketch keeps 32-bit hash values (max_hash = 2^32 - 1 in every scheme): uint32 is lossless.
_SIG_DTYPE = np.dtype("<u4")


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
        self._proto = MinHash(num_perm=num_perm, seed=seed)

    def signature(self, text: str) -> np.ndarray:
        """The text's MinHash signature: ``num_perm`` uint32 values."""
        m = self._proto.copy()
        m.update_batch([w.encode() for w in unigrams(text)])
        return np.asarray(m.hashvalues, dtype=np.uint32)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """Signatures of many texts at once, shape ``(len(texts), num_perm)``; equal to
        ``signature`` row by row (each distinct word is hashed once per call)."""
        vocab: dict[str, int] = {}
        members: list[list[int]] = []
        for text in texts:
            members.append([vocab.setdefault(w, len(vocab)) for w in unigrams(text)])
        # A one-word MinHash's hash values are that word's permuted hashes: the signature of a
        # set is their column-wise minimum.
        rows = self._word_rows(list(vocab))
        out = np.full((len(texts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        for i, idx in enumerate(members):
            if idx:
                out[i] = rows[idx].min(axis=0)
        return out

    def band_keys(self, sig: np.ndarray) -> list[str]:
        """One key per band: ``<band>.<digest of the band's hash values>``."""
        out = []
        for b in range(self.bands):
            chunk = sig[b * self.rows : (b + 1) * self.rows].astype(np.uint64).tobytes()
            out.append(f"{b:02d}.{hashlib.blake2b(chunk, digest_size=12).hexdigest()}")
        return out

    def keys(self, text: str) -> list[str]:
        """One key per band: ``<band>.<digest of the band's hash values>``."""
        return self.band_keys(self.signature(text))

    def _word_rows(self, words: list[str]) -> np.ndarray:
        # The permuted hashes of each word, through datasketch itself so that a change of its
        # hashing scheme cannot make batch and single signatures disagree; the batch saves the
        # per-text MinHash set-up and hashes each distinct word once.
        if not words:
            return np.empty((0, self.num_perm), dtype=np.uint32)
        rows = np.empty((len(words), self.num_perm), dtype=np.uint32)
        for i, w in enumerate(words):
            m = self._proto.copy()
            m.update_batch([w.encode()])
            rows[i] = m.hashvalues
        return rows

    @staticmethod
    def jaccard(a: str, b: str) -> float:
        """Exact Jaccard similarity of the unigram sets (for tests and diagnostics)."""
        sa, sb = unigrams(a), unigrams(b)
        return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def signature_bytes(num_perm: int = 128) -> int:
    """Size of an encoded signature: 4 bytes per permutation (512 for the paper's 128)."""
    return num_perm * _SIG_DTYPE.itemsize


def encode_signature(sig: np.ndarray) -> bytes:
    """The signature as stored in KV: little-endian uint32 values, 4 bytes each."""
    return np.asarray(sig).astype(_SIG_DTYPE, copy=False).tobytes()


def decode_signature(data: bytes) -> np.ndarray:
    if len(data) % _SIG_DTYPE.itemsize:
        raise ValueError(f"a signature is a whole number of uint32 values, got {len(data)} bytes")
    return np.frombuffer(data, dtype=_SIG_DTYPE).astype(np.uint32)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of equal hash values: an unbiased estimate of the Jaccard similarity."""
    if a.shape != b.shape:
        raise ValueError(f"signatures of different lengths: {a.shape} and {b.shape}")
    return float(np.count_nonzero(a == b)) / a.size


def word_hashes(text: str) -> np.ndarray:
    """The text's unigrams as sorted, distinct 32-bit hashes: what a candidate is verified with."""
    digests = b"".join(hashlib.blake2b(w.encode(), digest_size=4).digest() for w in unigrams(text))
    return np.unique(np.frombuffer(digests, dtype=_SIG_DTYPE)).astype(np.uint32)


def encode_words(hashes: np.ndarray) -> bytes:
    """Word hashes as stored in KV: little-endian uint32 values, 4 bytes per distinct word."""
    return np.asarray(hashes).astype(_SIG_DTYPE, copy=False).tobytes()


def decode_words(data: bytes) -> np.ndarray:
    if len(data) % _SIG_DTYPE.itemsize:
        raise ValueError(f"word hashes are a whole number of uint32 values, got {len(data)} bytes")
    return np.frombuffer(data, dtype=_SIG_DTYPE).astype(np.uint32)


def words_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted, distinct word-hash arrays (exact up to 32-bit hash
    collisions: ~n*m/2^32 spurious shared words per pair)."""
    union = len(a) + len(b)
    if union == 0:
        return 1.0
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (union - shared)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An instruction found in one of the newcomer's bands: its id, its stored word hashes
    (``encode_words``; None while it has not committed them) and the KV revision of that key
    (its rank)."""

    id: str
    words: bytes | None
    rev: int


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    by_id: str = ""  # the earlier near-duplicate that rejects the newcomer
    jaccard: float = 0.0  # its Jaccard similarity with the newcomer


def decide(
    own_words: np.ndarray, own_rev: int, candidates: Iterable[Candidate], *, threshold: float
) -> Decision:
    """Admit the newcomer unless an EARLIER committed candidate is a near-duplicate.

    Candidates ranked after the newcomer (higher revision), the newcomer itself (same revision)
    and uncommitted ones (no word hashes yet) are ignored: each of them will see the newcomer
    when it decides. Of the rejecting candidates the most similar is reported (ties: earliest).
    """
    best: tuple[float, int, str] | None = None
    for c in candidates:
        if c.words is None or c.rev >= own_rev:
            continue
        j = words_jaccard(own_words, decode_words(c.words))
        if j >= threshold and (best is None or (-j, c.rev) < (-best[0], best[1])):
            best = (j, c.rev, c.id)
    if best is None:
        return Decision(admitted=True)
    return Decision(admitted=False, by_id=best[2], jaccard=best[0])
