"""The verified near-duplicate index: signatures, stored encodings, the decision rule and the
ordering rule that keeps racing replicas from admitting two near-duplicates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from datasketch import MinHash

from warriorcoder.arena.near_dup import (
    Candidate,
    LshBands,
    decide,
    decode_signature,
    decode_words,
    encode_signature,
    encode_words,
    estimated_jaccard,
    signature_bytes,
    unigrams,
    word_hashes,
    words_jaccard,
)
from warriorcoder.arena.near_dup_index import NearDupIndex

BASE = (
    "Write a Python function that merges overlapping intervals in a list and returns the merged "
    "list sorted by start."
)
# HumanEval/8 and HumanEval/14's statements: 7 shared unigrams of 43 (Jaccard 0.163), yet they
# share band 12, so the old rule (a band collision is a duplicate) rejected whichever came second.
HUMANEVAL_8 = (
    "For a given list of integers, return a tuple consisting of a sum and a product of all the "
    "integers in a list.\n    Empty sum should be equal to 0 and empty product should be equal to "
    "1.\n    >>> sum_product([])\n    (0, 1)\n    >>> sum_product([1, 2, 3, 4])\n    (10, 24)"
)
HUMANEVAL_14 = (
    "Return list of all prefixes from shortest to longest of the input string\n    >>> "
    "all_prefixes('abc')\n    ['a', 'ab', 'abc']"
)


@pytest.fixture(scope="module")
def bands() -> LshBands:
    return LshBands(num_perm=128, threshold=0.5)


def test_batch_signatures_equal_datasketch_text_by_text(bands: LshBands):
    texts = [BASE, HUMANEVAL_8, HUMANEVAL_14, "", "one"]
    batch = bands.signatures(texts)
    assert batch.shape == (5, 128)
    for text, row in zip(texts, batch, strict=True):
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([w.encode() for w in unigrams(text)])
        assert np.array_equal(row, m.hashvalues)
        assert bands.band_keys(row) == bands.keys(text)


def test_signature_encoding_is_512_bytes_and_lossless(bands: LshBands):
    sig = bands.signature(BASE)
    data = encode_signature(sig)
    assert len(data) == signature_bytes(128) == 512
    assert np.array_equal(decode_signature(data), sig)
    assert estimated_jaccard(sig, decode_signature(data)) == 1.0
    with pytest.raises(ValueError):
        decode_signature(data[:-1])


def test_word_hashes_are_4_bytes_per_distinct_word():
    words = word_hashes("Sort a list.\nReturn it. Sort it!")  # sort a list return it it!
    assert len(words) == len(unigrams("Sort a list.\nReturn it. Sort it!")) == 6
    assert len(encode_words(words)) == 24
    assert np.array_equal(decode_words(encode_words(words)), words)
    assert list(words) == sorted(words)


def test_exact_jaccard_of_word_hashes_matches_the_sets():
    near = BASE.replace("sorted by start", "ordered by its start")
    # BASE has 17 distinct words; the edit drops "sorted" and adds "ordered", "its": 16 of 19
    sa, sb = unigrams(BASE), unigrams(near)
    assert (len(sa), len(sa & sb), len(sa | sb)) == (17, 16, 19)
    assert LshBands.jaccard(BASE, near) == pytest.approx(16 / 19)
    assert words_jaccard(word_hashes(BASE), word_hashes(near)) == pytest.approx(16 / 19)
    assert words_jaccard(word_hashes(""), word_hashes("")) == 1.0


def test_identical_texts_are_duplicates(bands: LshBands):
    sig_a, sig_b = bands.signature(BASE), bands.signature(BASE.upper())
    assert estimated_jaccard(sig_a, sig_b) == 1.0
    stored = encode_words(word_hashes(BASE))
    d = decide(word_hashes(BASE.upper()), 9, [Candidate("first", stored, 4)], threshold=0.5)
    assert (d.admitted, d.by_id, d.jaccard) == (False, "first", 1.0)


def test_a_colliding_pair_at_jaccard_016_is_admitted(bands: LshBands):
    sa, sb = unigrams(HUMANEVAL_8), unigrams(HUMANEVAL_14)
    assert (len(sa & sb), len(sa | sb)) == (7, 43)
    shared = set(bands.keys(HUMANEVAL_8)) & set(bands.keys(HUMANEVAL_14))
    assert shared == {"12.855fc01e28b5fc4356cb0de4"}  # a candidate under LSH ...
    stored = encode_words(word_hashes(HUMANEVAL_8))
    d = decide(word_hashes(HUMANEVAL_14), 2, [Candidate("he8", stored, 1)], threshold=0.5)
    assert d.admitted  # ... but not a near-duplicate
    index = NearDupIndex(bands)
    assert index.admit("he8", HUMANEVAL_8).admitted
    assert [c.id for c in index.candidates(bands.keys(HUMANEVAL_14))] == ["he8"]
    assert index.admit("he14", HUMANEVAL_14).admitted
    assert len(index) == 2


def test_threshold_is_inclusive():
    a = word_hashes("a b c d")
    b = word_hashes("a b c d e f g h")  # 4 shared of 8: exactly 0.5
    assert not decide(a, 2, [Candidate("x", encode_words(b), 1)], threshold=0.5).admitted
    assert decide(a, 2, [Candidate("x", encode_words(b), 1)], threshold=0.51).admitted


def test_only_earlier_committed_candidates_reject():
    own = word_hashes(BASE)
    same = encode_words(own)
    assert decide(own, 5, [Candidate("later", same, 6)], threshold=0.5).admitted
    assert decide(own, 5, [Candidate("self", same, 5)], threshold=0.5).admitted
    assert decide(own, 5, [Candidate("uncommitted", None, 0)], threshold=0.5).admitted
    near = encode_words(word_hashes(BASE + " Thanks"))
    d = decide(
        own,
        5,
        [Candidate("b", near, 3), Candidate("a", same, 4), Candidate("c", same, 2)],
        threshold=0.5,
    )
    assert (d.admitted, d.by_id, d.jaccard) == (False, "c", 1.0)  # most similar, then earliest


def _race(texts: dict[str, str], order: tuple[str, ...], bands: LshBands) -> dict[str, bool]:
    """Run the KV protocol's steps for racing writers in the given interleaving over a dict that
    stands in for the bucket: 'B' band keys, 'W' words (commit, ranked), 'D' list and decide."""
    kv: dict[str, tuple[bytes, int]] = {}
    rev = itertools.count(1)
    keys = {n: bands.keys(t) for n, t in texts.items()}
    steps = {n: iter("BWD") for n in texts}
    admitted: dict[str, bool] = {}
    for name in order:
        step = next(steps[name])
        if step == "B":
            for k in keys[name]:
                kv[f"lsh.{k}.{name}"] = (b"", next(rev))
        elif step == "W":
            kv[f"words.{name}"] = (encode_words(word_hashes(texts[name])), next(rev))
        else:
            members = {
                key.rsplit(".", 1)[1]
                for key in kv
                if key.startswith("lsh.") and key.split(".", 1)[1].rsplit(".", 1)[0] in keys[name]
            }
            cands = [Candidate(m, *kv.get(f"words.{m}", (None, 0))) for m in members if m != name]
            own_rev = kv[f"words.{name}"][1]
            d = decide(word_hashes(texts[name]), own_rev, cands, threshold=0.5)
            admitted[name] = d.admitted
            if not d.admitted:  # withdraw
                for key in [k for k in kv if k.endswith("." + name)]:
                    del kv[key]
    return admitted


def test_two_racing_near_duplicates_are_never_both_admitted(bands: LshBands):
    texts = {"a": BASE, "b": BASE.replace("sorted by start", "ordered by its start")}
    assert LshBands.jaccard(texts["a"], texts["b"]) >= 0.5
    seen = set()
    # every interleaving of the two writers' three steps
    for slots in itertools.combinations(range(6), 3):
        order = tuple("a" if i in slots else "b" for i in range(6))
        result = _race(texts, order, bands)
        assert sum(result.values()) == 1, (order, result)
        seen.add(tuple(sorted(n for n, ok in result.items() if ok)))
    assert seen == {("a",), ("b",)}  # either may win, never both


def test_two_racing_distinct_colliding_instructions_are_both_admitted(bands: LshBands):
    texts = {"a": HUMANEVAL_8, "b": HUMANEVAL_14}
    for slots in itertools.combinations(range(6), 3):
        order = tuple("a" if i in slots else "b" for i in range(6))
        assert _race(texts, order, bands) == {"a": True, "b": True}


def test_index_release_frees_the_keys(bands: LshBands):
    index = NearDupIndex(bands)
    assert index.admit("a", BASE).admitted
    d = index.admit("b", BASE + " Thanks")
    assert (d.admitted, d.by_id) == (False, "a")
    assert len(index) == 1  # the rejected one withdrew
    index.release("a")
    assert len(index) == 0
    assert index.candidates(bands.keys(BASE)) == []
    assert index.admit("b", BASE + " Thanks").admitted
