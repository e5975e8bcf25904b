"""Batching in the local Hugging Face Triton server: one request vs. N concurrent ones.

Usage::

    python benchmarks/hf_batching.py --concurrency 6 --max-tokens 128

Builds the demo models, serves them with ``warriorcoder.localmodels.hf_server`` (one torch
thread, as ``warriorcoder up --demo`` does) and times generation through the project's own Triton
client: one request alone, then N at once to the same model (the server folds them into one batch).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from warriorcoder.launcher.processes import start_hf_triton
from warriorcoder.localmodels.demo import build_demo_models, write_models_file
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.settings import ChatTemplateSettings, ModelSettings
from warriorcoder.runtime.templates import ChatTemplate
from warriorcoder.runtime.triton import TritonPool


async def measure(url: str, model: str, template: Path, n: int, tokens: int) -> tuple[float, float]:
    cfg = ModelSettings(
        triton_url=url,
        triton_model=model,
        chat_template=ChatTemplateSettings(file=str(template)),
        max_concurrency=64,
    )
    prompt = ChatTemplate.from_settings(cfg.chat_template).conversation(None, "Sort a list.")
    params = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=tokens, seed=1)
    async with TritonPool({model: cfg}) as pool:
        await pool.generate(model, prompt, params, role="bench")  # warm-up
        singles = []
        for _ in range(3):
            t = time.monotonic()
            await pool.generate(model, prompt, params, role="bench")
            singles.append(time.monotonic() - t)
        t = time.monotonic()
        await asyncio.gather(
            *(pool.generate(model, prompt, params, role="bench") for _ in range(n))
        )
        return statistics.median(singles), time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = build_demo_models(Path(tmp) / "models")
        models_file = Path(tmp) / "models.yaml"
        write_models_file(models, models_file)
        proc = start_hf_triton(models_file, [m.name for m in models], threads=1)
        try:
            url = f"127.0.0.1:{proc.ports['grpc']}"
            for m in models:
                one, many = asyncio.run(
                    measure(url, m.name, m.tokenizer_config, args.concurrency, args.max_tokens)
                )
                print(
                    f"{m.name}: 1 request {one:.3f}s; {args.concurrency} concurrent {many:.3f}s "
                    f"-> {args.concurrency * one / many:.1f}x the throughput of one at a time"
                )
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
