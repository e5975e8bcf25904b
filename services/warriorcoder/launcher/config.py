"""The settings of an arena on one machine, built as typed structs, and the file its services read.

Usage::

    settings = scripted_arena_settings(["alpha", "beta", "gamma"], triton_grpc="127.0.0.1:8001")
    settings = for_run(settings, nats_url="nats://127.0.0.1:4222", samples_dir=Path("data/samples"))
    write_settings(Path("data/arena.yaml"), settings)

``warriorcoder up`` builds its ``ArenaSettings`` per backend mode (scripted, demo, or the user's
config), serves the ``local`` models on its own Triton (``serve_locally`` points them at it), and
writes the resolved settings to the YAML file the service processes load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml
from msgspec.structs import replace

from warriorcoder.runtime.settings import (
    ArenaSettings,
    ChallengerSettings,
    ChallengeSampling,
    ChatTemplateSettings,
    DecontaminationSettings,
    LocalModelSettings,
    ModelSettings,
    NatsSettings,
    NearDupSettings,
    QualitySettings,
    RoleSampling,
    SamplingSettings,
    Secret,
    ServiceSettings,
)

__all__ = [
    "demo_arena_settings",
    "for_run",
    "local_models_file",
    "own_template_file",
    "scripted_arena_settings",
    "serve_locally",
    "write_settings",
]

Preset = Literal["chatml", "llama3", "deepseek-coder"]
_PRESETS: tuple[Preset, ...] = (
    "chatml",
    "llama3",
    "deepseek-coder",
)  # distinct templates exercise each renderer


def _sampling(*, challenge: int, quality: int, response: int, judge: int) -> SamplingSettings:
    return SamplingSettings(
        challenge=ChallengeSampling(
            temperatures=[1.0, 1.2], top_ps=[0.95, 0.99], max_tokens=challenge
        ),
        quality=RoleSampling(temperature=1.0, top_p=0.95, max_tokens=quality),
        response=RoleSampling(temperature=1.0, top_p=0.95, max_tokens=response),
        judge=RoleSampling(temperature=1.0, top_p=0.995, max_tokens=judge),
    )


def _small_challenger(**changes: Any) -> ChallengerSettings:
    """Short water marks: a local arena is small and its backlog shows progress quickly."""
    base = ChallengerSettings(low_water=2, high_water=6, concurrency=2, poll_interval_s=0.2)
    return replace(base, **changes)


def scripted_arena_settings(
    names: list[str],
    *,
    triton_grpc: str,
    nats_url: str = "nats://127.0.0.1:4222",
    data_dir: Path = Path("data"),
) -> ArenaSettings:
    """An arena of the scripted models served by the Triton at ``triton_grpc``."""
    models = {
        name: ModelSettings(
            triton_url=triton_grpc,
            triton_model=name,
            chat_template=ChatTemplateSettings(preset=_PRESETS[i % len(_PRESETS)]),
            max_concurrency=4,
            timeout_s=60,
        )
        for i, name in enumerate(names)
    }
    return ArenaSettings(
        models=models,
        competitors=list(names),
        languages=["Python"],
        sampling=_sampling(challenge=256, quality=128, response=512, judge=256),
        challenger=_small_challenger(),
        nats=NatsSettings(url=nats_url, ack_wait_s=10, retry_delay_s=0.5),
        service=ServiceSettings(log_format="json", drain_timeout_s=10),
        data_dir=str(data_dir / "samples"),
    )


def demo_arena_settings(models: dict[str, Path]) -> ArenaSettings:
    """The random-weight demo models (name -> directory), served locally on the CPU."""
    return ArenaSettings(
        models={
            name: ModelSettings(
                local=LocalModelSettings(path=str(path), device="cpu", max_batch_size=8),
                triton_model=name,
                guided_choice=True,
                max_concurrency=8,
                timeout_s=300,
            )
            for name, path in models.items()
        },
        competitors=list(models),
        sampling=_sampling(challenge=48, quality=8, response=64, judge=8),
        # Random text: keep every instruction that is not empty or debris.
        challenger=_small_challenger(
            min_chars=1,
            max_chars=100_000,
            decontamination=DecontaminationSettings(enabled=False),
            near_dup=NearDupSettings(enabled=False),
            quality=QualitySettings(threshold=1),
        ),
        nats=NatsSettings(ack_wait_s=10, retry_delay_s=0.5),
        service=ServiceSettings(log_format="json", drain_timeout_s=20),
    )


def for_run(settings: ArenaSettings, *, nats_url: str, samples_dir: Path) -> ArenaSettings:
    """The settings pointed at this machine's nats-server and data directory."""
    return replace(settings, nats=replace(settings.nats, url=nats_url), data_dir=str(samples_dir))


def local_models_file(settings: ArenaSettings) -> dict[str, Any]:
    """The models file of ``warriorcoder.localmodels.hf_server`` for the ``local`` models."""
    return {
        "models": [
            {
                "name": m.triton_model,
                "path": m.local.path,
                "device": m.local.device,
                "dtype": m.local.dtype,
                "max_batch_size": m.local.max_batch_size,
            }
            for m in settings.models.values()
            if m.local is not None
        ]
    }


def own_template_file(path: str) -> str:
    """The tokenizer config of a local model directory or hub id (from the Hub cache that
    loading the model filled)."""
    local = Path(path)
    if local.is_dir():
        return str(local / "tokenizer_config.json")
    from huggingface_hub import hf_hub_download

    return str(hf_hub_download(repo_id=path, filename="tokenizer_config.json"))


def serve_locally(settings: ArenaSettings, triton_grpc: str) -> ArenaSettings:
    """Point every ``local`` model at the local Triton ``triton_grpc``; one without a template
    gets its own, from the tokenizer config beside its weights. May read the Hub cache: call it
    off the event loop."""
    models = {}
    for name, m in settings.models.items():
        if m.local is not None:
            tpl = m.chat_template
            if tpl.preset is None and tpl.file is None:
                tpl = replace(tpl, file=own_template_file(m.local.path))
            m = replace(m, triton_url=triton_grpc, local=None, chat_template=tpl)
        models[name] = m
    return replace(settings, models=models)


def _reveal(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return obj.reveal()  # the services need the real value; the file stays in the data dir
    raise NotImplementedError(f"cannot write {type(obj).__name__} to the arena config")


def write_settings(path: Path, settings: ArenaSettings) -> None:
    """Write ``settings`` as the YAML config the service processes load."""
    settings.validate()
    tree = msgspec.to_builtins(settings, enc_hook=_reveal)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
