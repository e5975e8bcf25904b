"""Export arena samples as training data: SFT, DPO, full battles or Chatbot Arena votes.

Usage::

    samples = samples_from_dir(Path("data"))                    # or: await samples_from_nats(url)
    export(samples, "sft", Path("out/sft.jsonl"))               # or .parquet
    export(samples, "dpo", Path("out/dpo.jsonl"), verified_only=True)   # test-backed pairs only
    export(samples, "trl", Path("out/trl.parquet"))             # TRL conversational preference
    export(samples, "hf", Path("out/dataset"))                  # a datasets.save_to_disk folder

Formats (one record per sample, votes: one per valid judge vote):

- ``sft``: ``{"id", "messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``, the
  conversational format of TRL's SFTTrainer.
- ``dpo``: ``{"id", "prompt", "chosen", "rejected"}``, the standard preference format of TRL's
  DPOTrainer.
- ``battles``: the whole Sample as on the wire (``type`` tag, votes, score card, ratings); a
  ``.jsonl`` export is line for line what the aggregator's shards hold.
- ``votes``: ``{"model_a", "model_b", "winner", "judge", "battle_id"}`` (Chatbot Arena battles;
  ``warriorcoder ratings --votes`` reads it).
- ``trl``: ``{"id", "prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}],
  "rejected": [{"role": "assistant", ...}], "test_backed"}``, the conversational preference
  format of TRL's DPOTrainer (TRL docs, "Dataset formats and types": the chat template is
  applied by the trainer) with the test-backed flag on every record (False without the
  verifier).
- ``hf``: a Hugging Face ``datasets`` folder (``Dataset.save_to_disk``; read it back with
  ``datasets.load_from_disk``), one row per sample with the columns of both trainers:
  ``messages`` (SFTTrainer) and ``prompt``/``chosen``/``rejected`` (DPOTrainer, as in ``trl``),
  plus ``id``, ``test_backed``, ``language``, ``winner``, ``loser`` and ``config_hash`` (the
  sample's provenance; null before it existed). Pick a trainer's columns with
  ``Dataset.select_columns``. Needs the ``datasets`` package (the ``datasets`` extra); the
  output is a folder path without a ``.jsonl``/``.parquet`` suffix.

Execution evidence (verifier on): when any exported sample carries tests or execution results,
every ``sft`` and ``dpo`` record also has ``test_backed`` (the chosen answer passed strictly more
tests than the rejected one), ``decided_by`` (``votes`` or ``execution``), ``tests`` (the test
module ``code`` with its ``names``, ``writer``, ``language``, ``framework``, ``usable``; null when
the battle had none) and ``execution`` (``sandbox`` and a run summary for the ``chosen`` and the
``rejected`` answer: ``status``, ``passed``, ``failed``, ``errored``, ``total``, ``exit_code``,
``wall_s``, ``cpu_s``, ``output_truncated`` and the ``summary`` text the judges saw; null when not
run), so the tests can be re-run on the answers. ``verified_only`` keeps only test-backed samples.

For the other formats the output suffix picks the encoding: ``.jsonl`` (JSON lines) or
``.parquet`` (Apache Arrow's Parquet writer, with a fixed schema per format; maps such as
``ratings_before`` become Parquet maps). Files and folders are written to a temporary name and
renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, get_args

import msgspec

from warriorcoder.arena.prompts import execution_summary
from warriorcoder.data.votes import encode_vote, votes_from_samples
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import RunResult, Sample, encode
from warriorcoder.runtime.settings import NatsSettings
from warriorcoder.runtime.shards import read_samples

__all__ = [
    "EVIDENCE_FIELDS",
    "FORMATS",
    "HF_FORMAT",
    "SUFFIXES",
    "ExportError",
    "Format",
    "arrow_schema",
    "export",
    "has_evidence",
    "hf_folder",
    "only_test_backed",
    "output_suffix",
    "read_export",
    "records",
    "samples_from_dir",
    "samples_from_nats",
]

log = logging.getLogger(__name__)

Format = Literal["sft", "dpo", "battles", "votes", "trl", "hf"]
FORMATS: Final[tuple[str, ...]] = get_args(Format)
SUFFIXES: Final = (".jsonl", ".parquet")
HF_FORMAT: Final = "hf"  # the format written as a folder, not a file
# The fields sft and dpo records gain when the export carries execution evidence.
EVIDENCE_FIELDS: Final = ("test_backed", "decided_by", "tests", "execution")


class ExportError(Exception):
    """An export that cannot be made (bad format or suffix, missing source); one-line message."""


# -- records ------------------------------------------------------------------------------------


def _check_format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt  # type: ignore[return-value]


def has_evidence(samples: Iterable[Sample]) -> bool:
    """Whether any sample carries tests or execution results (its export then has the
    ``EVIDENCE_FIELDS``)."""
    return any(s.tests is not None or s.execution is not None for s in samples)


def only_test_backed(samples: Iterable[Sample]) -> list[Sample]:
    """The samples whose preference the tests back (``Sample.test_backed``), in order."""
    return [s for s in samples if s.test_backed]


def _run_record(run: RunResult) -> dict[str, Any]:
    return {
        "status": run.status,
        "passed": run.passed,
        "failed": run.failed,
        "errored": run.errored,
        "total": run.total,
        "exit_code": run.exit_code,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "output_truncated": run.output_truncated,
        "summary": execution_summary(run),
    }


def _evidence(s: Sample) -> dict[str, Any]:
    t, ex = s.tests, s.execution
    tests = (
        None
        if t is None
        else {
            "writer": t.writer,
            "language": t.language,
            "framework": t.framework,
            "code": t.code,
            "names": list(t.tests),
            "usable": t.usable,
        }
    )
    execution = None
    if ex is not None:
        runs = (ex.attacker, ex.defender)
        chosen, rejected = runs if s.winner_role == "attacker" else runs[::-1]
        execution = {
            "sandbox": ex.sandbox,
            "chosen": _run_record(chosen),
            "rejected": _run_record(rejected),
        }
    return {
        "test_backed": s.test_backed,
        "decided_by": s.decided_by,
        "tests": tests,
        "execution": execution,
    }


def records(
    samples: Iterable[Sample], fmt: str, *, evidence: bool | None = None
) -> list[dict[str, Any]]:
    """The export records of ``samples`` in format ``fmt``, as plain JSON-ready dicts.

    ``evidence``: whether sft and dpo records carry the ``EVIDENCE_FIELDS`` (default: when any
    sample has tests or execution results, so every record of one export has the same fields).
    """
    fmt = _check_format(fmt)
    items = list(samples)
    if fmt == "trl" or fmt == "hf":
        return _trainer_records(items, fmt, has_evidence(items) if evidence is None else evidence)
    if fmt == "votes":
        return [msgspec.to_builtins(v) for v in votes_from_samples(items)]
    if fmt == "battles":
        return [msgspec.to_builtins(s) for s in items]
    if evidence is None:
        evidence = has_evidence(items)
    out: list[dict[str, Any]] = []
    for s in items:
        if fmt == "sft":
            rec: dict[str, Any] = {
                "id": s.id,
                "messages": [{"role": t.role, "content": t.content} for t in s.messages],
            }
        else:
            rec = {"id": s.id, "prompt": s.prompt, "chosen": s.chosen, "rejected": s.rejected}
        if evidence:
            rec.update(_evidence(s))
        out.append(rec)
    return out


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _trainer_records(items: Sequence[Sample], fmt: Format, evidence: bool) -> list[dict[str, Any]]:
    """``trl`` and ``hf`` records (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for s in items:
        rec: dict[str, Any] = {"id": s.id}
        if fmt == "hf":
            rec["messages"] = [_turn(t.role, t.content) for t in s.messages]
        rec.update(
            prompt=[_turn("user", s.prompt)],
            chosen=[_turn("assistant", s.chosen)],
            rejected=[_turn("assistant", s.rejected)],
            test_backed=s.test_backed,
        )
        if fmt == "hf":
            rec.update(
                language=s.language,
                winner=s.winner,
                loser=s.loser,
                config_hash=None if s.provenance is None else s.provenance.config_hash,
            )
        if evidence:
            rec.update(_evidence(s))
        out.append(rec)
    return out


def _jsonl_lines(samples: Sequence[Sample], fmt: Format) -> list[bytes]:
    if fmt == "battles":
        return [encode(s) for s in samples]  # byte-identical to the aggregator's shards
    if fmt == "votes":
        return [encode_vote(v) for v in votes_from_samples(samples)]
    return [msgspec.json.encode(r) for r in records(samples, fmt)]


# -- Arrow schemas ------------------------------------------------------------------------------


def _arrow_type(t: msgspec.inspect.Type) -> Any:
    import pyarrow as pa

    ins = msgspec.inspect
    if isinstance(t, ins.StrType):
        return pa.string()
    if isinstance(t, ins.LiteralType) and all(isinstance(v, str) for v in t.values):
        return pa.string()
    if isinstance(t, ins.IntType):
        return pa.int64()
    if isinstance(t, ins.FloatType):
        return pa.float64()
    if isinstance(t, ins.BoolType):
        return pa.bool_()
    if isinstance(t, ins.ListType | ins.VarTupleType):
        return pa.list_(_arrow_type(t.item_type))
    if isinstance(t, ins.DictType):
        return pa.map_(_arrow_type(t.key_type), _arrow_type(t.value_type))
    if isinstance(t, ins.StructType):
        return pa.struct(_arrow_fields(t))
    if isinstance(t, ins.UnionType):
        rest = [x for x in t.types if not isinstance(x, ins.NoneType)]
        if len(rest) == 1:
            return _arrow_type(rest[0])
    raise TypeError(f"no Arrow type for {t!r}")


def _arrow_fields(t: msgspec.inspect.StructType) -> list[Any]:
    import pyarrow as pa

    fields = []
    if t.tag_field is not None:
        fields.append(pa.field(t.tag_field, pa.string(), nullable=False))
    for f in t.fields:
        nullable = not f.required or isinstance(f.type, msgspec.inspect.UnionType)
        fields.append(pa.field(f.encode_name, _arrow_type(f.type), nullable=nullable))
    return fields


def _evidence_fields() -> list[Any]:
    import pyarrow as pa

    run = pa.struct(
        [
            pa.field("status", pa.string()),
            pa.field("passed", pa.int64()),
            pa.field("failed", pa.int64()),
            pa.field("errored", pa.int64()),
            pa.field("total", pa.int64()),
            pa.field("exit_code", pa.int64()),
            pa.field("wall_s", pa.float64()),
            pa.field("cpu_s", pa.float64()),
            pa.field("output_truncated", pa.bool_()),
            pa.field("summary", pa.string()),
        ]
    )
    tests = pa.struct(
        [
            pa.field("writer", pa.string()),
            pa.field("language", pa.string()),
            pa.field("framework", pa.string()),
            pa.field("code", pa.string()),
            pa.field("names", pa.list_(pa.string())),
            pa.field("usable", pa.bool_()),
        ]
    )
    execution = pa.struct(
        [pa.field("sandbox", pa.string()), pa.field("chosen", run), pa.field("rejected", run)]
    )
    return [
        pa.field("test_backed", pa.bool_(), nullable=False),
        pa.field("decided_by", pa.string(), nullable=False),
        pa.field("tests", tests),
        pa.field("execution", execution),
    ]


def arrow_schema(fmt: str, *, evidence: bool = False) -> Any:
    """The ``pyarrow.Schema`` of a format's Parquet export (battles: derived from ``Sample``);
    ``evidence``: sft and dpo with the ``EVIDENCE_FIELDS``."""
    import pyarrow as pa

    from warriorcoder.data.votes import ArenaVote

    fmt = _check_format(fmt)
    if fmt == "battles":
        info = msgspec.inspect.type_info(Sample)
    elif fmt == "votes":
        info = msgspec.inspect.type_info(ArenaVote)
    else:
        turn = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
        turns = pa.list_(turn)
        if fmt == "sft":
            cols = [("messages", turns)]
        elif fmt == "dpo":
            cols = [("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]
        else:  # trl, hf
            cols = [("prompt", turns), ("chosen", turns), ("rejected", turns)]
            cols.append(("test_backed", pa.bool_()))
            if fmt == "hf":
                cols.insert(0, ("messages", turns))
                cols += [(c, pa.string()) for c in ("language", "winner", "loser", "config_hash")]
        fields = [pa.field(name, t, nullable=name == "config_hash") for name, t in cols]
        extra = [f for f in _evidence_fields() if f.name not in dict(cols)] if evidence else []
        return pa.schema([pa.field("id", pa.string(), nullable=False), *fields, *extra])
    assert isinstance(info, msgspec.inspect.StructType)
    return pa.schema(_arrow_fields(info))


# -- writing ------------------------------------------------------------------------------------


def output_suffix(out_path: Path) -> str:
    """The output's suffix (``.jsonl`` or ``.parquet``); ``ExportError`` for anything else."""
    suffix = out_path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ExportError(
            f"cannot export to {out_path}: unsupported suffix {suffix or '(none)'!r}, "
            f"use {' or '.join(SUFFIXES)}"
        )
    return suffix


def export(
    samples: Iterable[Sample], fmt: str, out_path: Path | str, *, verified_only: bool = False
) -> int:
    """Write ``samples`` in format ``fmt`` to ``out_path`` (``.jsonl`` or ``.parquet``);
    ``verified_only``: only the test-backed samples.

    Returns the number of records written. Creates the parent directory; replaces the file.
    """
    out_path = Path(out_path)
    fmt_ = _check_format(fmt)
    items = only_test_backed(samples) if verified_only else list(samples)
    if fmt_ == HF_FORMAT:
        return _write_hf(items, hf_folder(out_path))
    suffix = output_suffix(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        if suffix == ".jsonl":
            lines = _jsonl_lines(items, fmt_)
            with tmp.open("wb") as f:
                for line in lines:
                    f.write(line + b"\n")
            count = len(lines)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = records(items, fmt_)
            schema = arrow_schema(fmt_, evidence=has_evidence(items))
            table = pa.Table.from_pylist(rows, schema=schema)
            pq.write_table(table, tmp)
            count = len(rows)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def hf_folder(out_path: Path) -> Path:
    """``out_path`` as the folder of an ``hf`` export; ``ExportError`` for a data-file suffix or
    an existing path that is not a ``datasets`` folder (never replaced)."""
    if out_path.suffix.lower() in SUFFIXES:
        raise ExportError(
            f"cannot export format hf to {out_path}: it writes a datasets folder, give a folder "
            f"path (without {' or '.join(SUFFIXES)})"
        )
    if out_path.exists() and not (out_path / _HF_STATE).is_file():
        raise ExportError(
            f"cannot export format hf to {out_path}: it exists and is not a datasets folder "
            "(one written by save_to_disk is replaced; anything else is left alone)"
        )
    return out_path


_HF_STATE = "state.json"  # what Dataset.save_to_disk writes beside the Arrow files


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ExportError(
            "--format hf needs the Hugging Face `datasets` package: "
            "pip install 'warriorcoder[datasets]'"
        ) from None
    return datasets


def _write_hf(items: Sequence[Sample], out_path: Path) -> int:
    """Write ``items`` as an ``hf`` folder, replacing a previous one only once the new one is
    complete (``datasets.load_from_disk`` never sees half a folder)."""
    import pyarrow as pa

    datasets = _datasets()
    evidence = has_evidence(items)
    schema = arrow_schema(HF_FORMAT, evidence=evidence)
    rows = records(items, HF_FORMAT, evidence=evidence)
    features = datasets.Features.from_arrow_schema(schema)
    ds = datasets.Dataset(datasets.table.InMemoryTable(pa.Table.from_pylist(rows, schema=schema)))
    ds = ds.cast(features) if ds.features != features else ds
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    old = out_path.with_name(f".{out_path.name}.{os.getpid()}.old")
    try:
        ds.save_to_disk(str(tmp))
        if out_path.exists():
            os.replace(out_path, old)
        os.replace(tmp, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return len(rows)


def read_export(path: Path | str) -> list[dict[str, Any]]:
    """Read an export back as dicts (Parquet maps become dicts again; an ``hf`` folder through
    ``datasets.load_from_disk``)."""
    path = Path(path)
    if path.is_dir():
        loaded: list[dict[str, Any]] = _datasets().load_from_disk(str(path)).to_list()
        return loaded
    if output_suffix(path) == ".jsonl":
        with path.open("rb") as f:
            return [msgspec.json.decode(line) for line in f if line.strip()]
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist(maps_as_pydicts="strict")
    return rows


# -- sources ------------------------------------------------------------------------------------


def _dedup(samples: Iterable[Sample]) -> list[Sample]:
    seen: set[str] = set()
    out: list[Sample] = []
    for s in samples:
        if s.id not in seen:
            seen.add(s.id)
            out.append(s)
    return out


def samples_from_dir(data_dir: Path | str) -> list[Sample]:
    """Every sample in a data directory's shards, once each, oldest first (by ``created_at``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ExportError(f"no such data directory: {data_dir}")
    samples = _dedup(read_samples(data_dir))
    samples.sort(key=lambda s: s.created_at)  # stable: shard order among equal times
    return samples


async def samples_from_nats(
    url: str | None = None,
    *,
    settings: NatsSettings | None = None,
    stream: str = subjects.STREAM_SAMPLES,
    subject: str = subjects.SAMPLES,
    batch: int = 256,
    fetch_timeout_s: float = 5.0,
) -> list[Sample]:
    """Every sample in the samples stream, once each, in stream order; returns when caught up.

    Reads through an ephemeral pull consumer (no acks, deliver all) up to the stream's last
    sequence as it was at the start, and stops early if a fetch waits ``fetch_timeout_s`` for
    nothing (e.g. the last messages aged out meanwhile). ``settings`` gives credentials and TLS;
    ``url``, when given, replaces its URL. Undecodable messages are logged and skipped.
    """
    from nats.js import api as js_api
    from nats.js.errors import NotFoundError

    cfg = settings or NatsSettings()
    if url is not None:
        cfg = msgspec.structs.replace(cfg, url=url)
    nc = await connect_briefly(cfg)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            raise ExportError(f"no stream {stream} on {cfg.url}") from None
        last = int(info.state.last_seq)
        if int(info.state.messages) == 0:
            return []
        config = js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.NONE,
            deliver_policy=js_api.DeliverPolicy.ALL,
            inactive_threshold=60.0,
            mem_storage=True,
        )
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
        decoder = msgspec.json.Decoder(Sample)
        out: list[Sample] = []
        skipped = 0
        try:
            done = False
            while not done:
                try:
                    msgs = await sub.fetch(batch, timeout=fetch_timeout_s)
                except TimeoutError:  # nats.errors.TimeoutError is one too
                    break
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.stream >= last or meta.num_pending == 0:
                        done = True
                    try:
                        out.append(decoder.decode(msg.data))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        skipped += 1
        finally:
            try:
                name = (await sub.consumer_info()).name
                await js.delete_consumer(stream, name)
            except Exception:  # the inactive threshold removes it anyway
                log.debug("could not delete the export consumer", exc_info=True)
            await sub.unsubscribe()
        if skipped:
            log.warning("skipped undecodable samples", extra={"skipped": skipped})
        return _dedup(out)
    finally:
        await nc.close()


async def connect_briefly(cfg: NatsSettings) -> Any:
    """Connect once, unlike the services, which wait for NATS forever."""
    from warriorcoder.runtime.bus import connect

    try:
        return await connect(cfg, name="warriorcoder-export", persistent=False)
    except Exception as exc:
        raise ExportError(f"cannot connect to NATS at {cfg.url}: {exc}") from None
