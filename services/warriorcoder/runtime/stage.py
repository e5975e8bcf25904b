"""A stage is a declaration: its name, the stream it consumes, the models it calls, its handler.

Usage::

    STAGE = Stage(
        name="verifier",
        consumes=Consumes.declared("verifier", Battle),
        models=no_models,
        setup=setup,
    )

One runner (``warriorcoder.runtime.service.run_service``) serves every stage: it connects to
NATS, ensures the topology, opens the Triton clients of ``models(settings)``, serves the health and
metrics endpoints, enters ``setup(deps)`` to build the handler, and consumes the stream with the
service's in-flight and drain limits until SIGTERM. A new stage is a small file; the verifier
(``warriorcoder.stages.verifier``: consumes answered battles, runs both answers' code against
their tests in a sandbox, publishes the battles to the judges, calls no model) is, in short::

    @asynccontextmanager
    async def setup(deps: Deps) -> AsyncIterator[Handler[Battle]]:
        sandbox = Sandbox(deps.settings.verifier.sandbox)   # anything to open and close: here
        try:
            yield make_handler(deps.settings, sandbox, deps.publisher)
        finally:
            await sandbox.close()

    def make_handler(settings, sandbox, publisher) -> Handler[Battle]:
        async def handle(b: Battle) -> None:
            runs = await gather(sandbox.run_pytest(...), sandbox.run_pytest(...))
            await publisher.publish(subjects.BATTLES, with_execution(b, runs), msg_id=b.id)
        return handle

    STAGE = Stage(name="verifier", consumes=Consumes.declared("verifier", Battle),
                  models=no_models, setup=setup)

and one line in ``warriorcoder.stages.STAGES``. Handlers take the narrow interfaces of
``warriorcoder.runtime.ports`` (``deps.inference``, ``deps.publisher``, ``deps.buckets``), so their
unit tests run on the in-process fakes. A stage that produces instead of consuming (the
challenger) declares ``consumes=None`` and its own ``run(deps, stop)`` loop.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Generic, TypeVar

from warriorcoder.proto import topology
from warriorcoder.runtime.bus import Bus
from warriorcoder.runtime.ports import Buckets, Inference, Publisher
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings

__all__ = ["Consumes", "Deps", "Handler", "Stage", "no_models"]

T = TypeVar("T")
Handler = Callable[[T], Awaitable[None]]  # handles one decoded message of a stage


@dataclass(frozen=True, slots=True)
class Deps:
    """What a stage gets from the runner: settings, its models' roster, and its clients."""

    settings: ArenaSettings
    roster: Roster
    inference: Inference
    publisher: Publisher
    buckets: Buckets
    # The concrete bus, for what no handler needs (stream backlog, the embeddings stream of the
    # challenger's diversity gate); handlers take the interfaces above.
    bus: Bus

    @classmethod
    def build(
        cls, settings: ArenaSettings, models: list[str], *, inference: Inference, bus: Bus
    ) -> Deps:
        """Deps of a stage that calls ``models``, its bus serving as publisher and buckets."""
        return cls(
            settings=settings,
            roster=Roster.from_settings(settings, models),
            inference=inference,
            publisher=bus,
            buckets=bus,
            bus=bus,
        )


@dataclass(frozen=True, slots=True)
class Consumes(Generic[T]):
    """The work stream a stage consumes, through a durable shared by all its replicas."""

    stream: str
    durable: str
    type: type[T]
    # Messages delivered and not yet settled across all replicas (None: the bus's default);
    # 1 makes the stage one ordered writer.
    max_ack_pending: int | None = None

    @classmethod
    def declared(
        cls, stage: str, type_: builtins.type[T], *, max_ack_pending: int | None = None
    ) -> Consumes[T]:
        """The stream and durable the topology declares for ``stage``
        (``warriorcoder.proto.topology.CONSUMERS``), consumed as ``type_``."""
        c = topology.consumer(stage)
        return cls(c.stream, c.durable, type_, max_ack_pending=max_ack_pending)


@dataclass(frozen=True, slots=True)
class Stage(Generic[T]):
    """One service. Either ``consumes`` + ``setup`` (an async context that yields the handler),
    or ``consumes=None`` + ``run`` (a loop of its own until ``stop``)."""

    name: str
    models: Callable[[ArenaSettings], list[str]]  # the models the stage calls
    consumes: Consumes[T] | None = None
    setup: Callable[[Deps], AbstractAsyncContextManager[Handler[T]]] | None = None
    run: Callable[[Deps, asyncio.Event], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        consuming = self.consumes is not None and self.setup is not None and self.run is None
        producing = self.consumes is None and self.setup is None and self.run is not None
        if not (consuming or producing):
            raise TypeError(f"stage {self.name!r}: give consumes and setup, or run alone")


def no_models(settings: ArenaSettings) -> list[str]:
    """``models`` of a stage that calls no model."""
    return []
