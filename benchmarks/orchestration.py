"""Orchestration cost: CPU time per battle of each service, with backends that answer at once.

Usage::

    python benchmarks/orchestration.py --battles 200 [--warmup 30] [--profile DIR]

Runs ``LocalArena`` with scripted models (near-instant, on the local PyTriton Triton; verifier
off), lets ``--warmup`` battles pass, then reads each service process's CPU time (``utime +
stime`` of ``/proc/<pid>/stat``) before and after ``--battles`` more samples are on disk: CPU
milliseconds per battle per service and their sum. End to end it reports battles per second,
and then sends the same requests straight to Triton (as many per model as Triton served during
the measured battles, read off its ``nv_inference_request_success`` counter; one prompt, full
concurrency, through the services' own ``TritonPool``): the backend's own ceiling, for the
ratio. ``--profile DIR`` records a py-spy flame graph (``DIR/<service>.svg``) of every service
over the measured battles (py-spy's sampling costs CPU: compare figures without it); with
``--profile-format raw`` it records collapsed stacks (``DIR/<service>.txt``) instead and prints
each service's top frames by their share of the samples (inclusive: the frame or its callees).
After the battles, ``--nats-ops N`` times N sequential KV operations of each kind on the arena's
nats-server from this process (CPU microseconds per operation: what nats.py itself costs per
request, JSON API get vs direct get vs one batched read of 25 keys, nats.py's write vs
``js_publish``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from warriorcoder.launcher.arena import LocalArena
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.triton import TritonPool

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
SERVICES = ("challenger", "responder", "verifier", "judge", "aggregator")
PROMPT = "Write a Python function that returns the sum of a list of integers."


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def syscalls(pid: int) -> tuple[int, int]:
    """(read, write) system calls of a process so far (``syscr``, ``syscw`` of /proc/<pid>/io):
    each NATS or gRPC flush is a write, each wake-up with data a read."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def triton_requests(metrics_port: int) -> dict[str, int]:
    """Requests each model has served so far, from Triton's Prometheus metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    counts: dict[str, int] = {}
    for m in re.finditer(
        r'^nv_inference_request_success\{model="([^"]+)"[^}]*\} (\S+)', text, re.M
    ):
        counts[m[1]] = counts.get(m[1], 0) + int(float(m[2]))
    return counts


def top_frames(collapsed: str, n: int) -> list[tuple[str, float]]:
    """The ``n`` frames present in the largest share of py-spy's collapsed stacks (``a;b;c
    count`` lines), each counted once per stack, idle samples (an event loop waiting in
    ``select``) left out."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any("select (selectors.py" in f for f in frames):
            continue
        total += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return [(f, c / total) for f, c in inclusive.most_common(n)] if total else []


async def nats_ops(url: str, n: int) -> dict[str, float]:
    """CPU microseconds of this process per KV operation, ``n`` sequential operations each."""
    from warriorcoder.runtime.bus import connect
    from warriorcoder.runtime.settings import NatsSettings

    nc = await connect(NatsSettings(url=url), persistent=False)
    out: dict[str, float] = {}
    try:
        for direct in (False, True):
            out.update(await _bucket_ops(nc.jetstream(), direct, n))
    finally:
        await nc.close()
    return out


async def _bucket_ops(js: Any, direct: bool, n: int) -> dict[str, float]:
    import uuid

    from nats.js import api as js_api

    from warriorcoder.runtime.bus import RetryingKeyValue

    name = f"bench_{uuid.uuid4().hex[:8]}"
    raw = await js.create_key_value(js_api.KeyValueConfig(bucket=name, direct=direct))
    kv = RetryingKeyValue(raw, budget_s=5)
    keys = [f"k{i}" for i in range(25)]
    for k in keys:
        await kv.put(k, b"x" * 64)
    out: dict[str, float] = {}

    async def timed(label: str, op: Callable[[int], Awaitable[object]]) -> None:
        started = time.process_time()
        for i in range(n):
            await op(i)
        out[label] = (time.process_time() - started) / n * 1e6

    await timed(f"get ({'direct' if direct else 'JSON API'})", lambda i: raw.get(keys[i % 25]))
    if direct:
        await timed("get_many of 25 keys (one batched direct get)", lambda i: kv.get_many(keys))
    else:
        await timed("put (nats.py KeyValue.put)", lambda i: raw.put(keys[i % 25], b"y"))
        await timed("put (RetryingKeyValue, js_publish)", lambda i: kv.put(keys[i % 25], b"y"))
    await js.delete_key_value(name)
    return out


async def direct(arena: LocalArena, requests: dict[str, int], concurrency: int) -> float:
    """Seconds to send ``requests`` (per model) straight to Triton at full concurrency."""
    assert arena.run_settings is not None
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=256)
    work = [m for m, n in requests.items() for _ in range(n)]
    sem = asyncio.Semaphore(concurrency)

    async def one(pool: TritonPool, model: str) -> None:
        async with sem:
            await pool.generate(model, PROMPT, params, role="response")

    async with TritonPool(arena.run_settings.models) as pool:
        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for model in work:
                tg.create_task(one(pool, model))
        return time.monotonic() - started


async def run(args: argparse.Namespace, data_dir: Path) -> None:
    total = args.warmup + args.battles
    async with LocalArena(data_dir, mode="scripted", battles=total, verifier="off") as arena:
        async with asyncio.timeout(3600):
            await arena.wait_for_samples(args.warmup, poll_s=0.05)
        pids = {name: arena.procs[name].pid for name in SERVICES if name in arena.procs}
        metrics_port = arena.procs["tritonserver"].ports["metrics"]
        served = triton_requests(metrics_port)
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        calls_before = {name: syscalls(pid) for name, pid in pids.items()}
        spies = []
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, pid in pids.items():
                argv = ["record", "--pid", str(pid), "--rate", "50", "--nonblocking"]
                raw = args.profile_format == "raw"
                argv += ["--format", args.profile_format]
                argv += ["-o", str(args.profile / f"{name}.{'txt' if raw else 'svg'}")]
                spies.append(await asyncio.create_subprocess_exec(args.py_spy, *argv))
        started = time.monotonic()
        async with asyncio.timeout(3600):
            await arena.wait_for_samples(total, poll_s=0.05)
        took = time.monotonic() - started
        after = {name: cpu_s(pid) for name, pid in pids.items()}
        calls_after = {name: syscalls(pid) for name, pid in pids.items()}
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its flame graph and exits
            await spy.wait()
        now = triton_requests(metrics_port)
        requests = {m: now[m] - served.get(m, 0) for m in now if now[m] > served.get(m, 0)}
        straight = await direct(arena, requests, args.concurrency)
        per_op = await nats_ops(arena.nats_url, args.nats_ops) if args.nats_ops else {}
    per_battle = {n: (after[n] - before[n]) / args.battles * 1e3 for n in pids}
    for name, ms in per_battle.items():
        r = (calls_after[name][0] - calls_before[name][0]) / args.battles
        w = (calls_after[name][1] - calls_before[name][1]) / args.battles
        print(f"cpu_ms_per_battle {name}={ms:.2f}")
        print(f"syscalls_per_battle {name} reads={r:.0f} writes={w:.0f}")
    print(f"cpu_ms_per_battle sum={sum(per_battle.values()):.2f}")
    for label, us in per_op.items():
        print(f"nats_cpu_us_per_op {label}: {us:.0f}")
    if args.profile and args.profile_format == "raw":
        for name in pids:
            path = args.profile / f"{name}.txt"
            if path.exists():
                print(f"top frames {name}:")
                for frame, share in top_frames(path.read_text(), args.top):
                    print(f"  {share:6.1%}  {frame}")
    calls = sum(requests.values())
    print(
        f"battles={args.battles} run={took:.1f}s arena={args.battles / took:.1f} battles/s "
        f"requests={calls} ({calls / args.battles:.1f}/battle) "
        f"triton_direct={args.battles / straight:.1f} battles/s "
        f"ratio={straight / took:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--battles", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=64, help="direct requests in flight")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy flame graphs here")
    ap.add_argument("--profile-format", choices=("flamegraph", "raw"), default="flamegraph")
    ap.add_argument("--nats-ops", type=int, default=0, help="time N KV operations of each kind")
    ap.add_argument("--top", type=int, default=25, help="frames listed per service (raw)")
    here = Path(sys.executable).parent / "py-spy"
    ap.add_argument(
        "--py-spy", default=shutil.which("py-spy") or (str(here) if here.exists() else "py-spy")
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
