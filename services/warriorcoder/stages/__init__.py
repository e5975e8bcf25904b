"""The arena's stages, one package each, and the registry the ``serve`` command reads.

Usage::

    stage = load("judge")          # imports that stage's module only
    for name in STAGES: ...

Each stage module declares one ``STAGE`` (``warriorcoder.runtime.stage.Stage``). The registry names
modules instead of importing them, so a command that serves no stage (``warriorcoder schema``)
loads no stage and none of their dependencies. A new stage adds one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warriorcoder.runtime.stage import Stage

__all__ = ["STAGES", "load"]

# service name -> the module that declares its STAGE
STAGES: dict[str, str] = {
    "challenger": "warriorcoder.stages.challenger.service",
    "responder": "warriorcoder.stages.responder.service",
    "verifier": "warriorcoder.stages.verifier.service",
    "judge": "warriorcoder.stages.judge.service",
    "aggregator": "warriorcoder.stages.aggregator.service",
}


def load(name: str) -> Stage[Any]:
    """The declaration of the stage ``name`` (a key of ``STAGES``)."""
    stage: Stage[Any] = importlib.import_module(STAGES[name]).STAGE
    if stage.name != name:
        raise TypeError(f"{STAGES[name]}.STAGE declares {stage.name!r}, not {name!r}")
    return stage
