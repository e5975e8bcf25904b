"""Whether `warriorcoder up` runs the verifier: wherever the sandbox works, unless the config says.

Usage::

    choice = verifier_choice(Path("arena.yaml"), {})        # "auto", "on" or "off"
    decision = decide_verifier(SandboxSettings(), choice, check=probe)
    settings = with_verifier(settings, enabled=decision.enabled)

The services default to ``verifier.enabled: false`` (a deployment turns it on on purpose), but
``up`` runs execution-checked battles by default: with ``--scripted``, ``--demo`` and a config
that does not set ``verifier.enabled``, the verifier runs when the sandbox tool works on this
machine (``check``, ``warriorcoder.sandbox.probe``), and otherwise the arena runs unverified and
``line`` says why and what to install. A config that sets ``verifier.enabled: true`` on a machine
without a working sandbox is an error (``VerifierUnavailable``) before anything starts; one that
sets it false is obeyed without probing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from msgspec.structs import replace

from warriorcoder.errors import ArenaError
from warriorcoder.runtime.settings import ArenaSettings, SandboxSettings, apply_env_overrides
from warriorcoder.sandbox import SandboxUnavailable

__all__ = [
    "INSTALL_HINT",
    "Choice",
    "VerifierDecision",
    "VerifierUnavailable",
    "decide_verifier",
    "verifier_choice",
    "with_verifier",
]

Choice = Literal["auto", "on", "off"]
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; it needs unprivileged user "
    "namespaces, or root)"
)


class VerifierUnavailable(ArenaError, RuntimeError):
    """The config asks for the verifier and this machine cannot sandbox code."""

    reason = "sandbox_unavailable"


@dataclass(frozen=True, slots=True)
class VerifierDecision:
    enabled: bool  # the run's ``verifier.enabled``
    line: str  # one line for the terminal: on or off, and why


def verifier_choice(config: Path | None, env: Mapping[str, str]) -> Choice:
    """What the user's config (and its ``WARRIORCODER__`` environment overrides) says about
    ``verifier.enabled``: "on", "off", or "auto" when it does not say (no config: "auto").
    Call it on a config ``load_settings`` accepted: the value is a bool there."""
    if config is None:
        return "auto"
    tree: Any = yaml.safe_load(config.read_text()) or {}
    tree = apply_env_overrides(tree, env)
    verifier = tree.get("verifier")
    if not isinstance(verifier, dict) or "enabled" not in verifier:
        return "auto"
    return "on" if verifier["enabled"] is True else "off"


def decide_verifier(
    sandbox: SandboxSettings,
    choice: Choice,
    *,
    check: Callable[[SandboxSettings], str],
) -> VerifierDecision:
    """The verifier on or off for a run with these sandbox settings; ``check`` returns a
    description of the working sandbox or raises ``SandboxUnavailable`` with the reason (it may
    run the tool: call this off the event loop)."""
    if choice == "off":
        return VerifierDecision(
            False,
            "verifier: off (verifier.enabled is false in the config): battles are judged "
            "without running their code",
        )
    try:
        works = check(sandbox)
    except SandboxUnavailable as exc:
        if choice == "on":
            raise VerifierUnavailable(
                f"verifier.enabled is true in the config, but code cannot be sandboxed on this "
                f"machine: {exc}. {INSTALL_HINT[0].upper()}{INSTALL_HINT[1:]}, or set "
                "verifier.enabled: false to run the arena unverified"
            ) from exc
        return VerifierDecision(
            False,
            f"verifier: OFF: code cannot be sandboxed on this machine ({exc}); the arena runs "
            f"UNVERIFIED (judges only). For execution-checked battles, {INSTALL_HINT}",
        )
    return VerifierDecision(
        True,
        f"verifier: on: both answers of every battle run against model-written tests in a "
        f"sandbox ({works})",
    )


def with_verifier(settings: ArenaSettings, *, enabled: bool) -> ArenaSettings:
    """``settings`` with ``verifier.enabled`` set."""
    return replace(settings, verifier=replace(settings.verifier, enabled=enabled))
