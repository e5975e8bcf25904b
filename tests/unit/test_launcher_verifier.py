"""`warriorcoder up` runs the verifier where code can be sandboxed, says so where it cannot, and
refuses a config that asks for it there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from warriorcoder.launcher.arena import LocalArena
from warriorcoder.launcher.config import scripted_arena_settings, write_settings
from warriorcoder.launcher.verifier import (
    VerifierUnavailable,
    decide_verifier,
    verifier_choice,
    with_verifier,
)
from warriorcoder.runtime.settings import SandboxSettings, load_settings
from warriorcoder.sandbox import SandboxUnavailable

SANDBOX = SandboxSettings(timeout_s=7)


def _works(seen: list[SandboxSettings]):
    def check(sandbox: SandboxSettings) -> str:
        seen.append(sandbox)
        return "bubblewrap 0.8.0"

    return check


def _broken(sandbox: SandboxSettings) -> str:
    raise SandboxUnavailable("bwrap: No such file or directory")


def _never(sandbox: SandboxSettings) -> str:
    raise AssertionError("probed although the config turned the verifier off")


def test_auto_runs_the_verifier_where_the_sandbox_works_and_probes_the_run_s_limits():
    seen: list[SandboxSettings] = []
    decision = decide_verifier(SANDBOX, "auto", check=_works(seen))
    assert decision.enabled is True
    assert seen == [SANDBOX]
    assert "verifier: on" in decision.line and "bubblewrap 0.8.0" in decision.line


def test_auto_without_a_sandbox_runs_unverified_and_says_why_and_what_to_install():
    decision = decide_verifier(SANDBOX, "auto", check=_broken)
    assert decision.enabled is False
    assert "\n" not in decision.line  # one line
    assert "UNVERIFIED" in decision.line
    assert "bwrap: No such file or directory" in decision.line  # why
    assert "apt-get install bubblewrap" in decision.line  # what to install


def test_a_config_that_asks_for_the_verifier_without_a_sandbox_is_refused():
    with pytest.raises(VerifierUnavailable) as info:
        decide_verifier(SANDBOX, "on", check=_broken)
    message = str(info.value)
    assert "verifier.enabled is true" in message and "No such file" in message
    assert "apt-get install bubblewrap" in message and "verifier.enabled: false" in message
    assert decide_verifier(SANDBOX, "on", check=_works([])).enabled is True


def test_a_config_that_turns_it_off_is_obeyed_without_probing():
    decision = decide_verifier(SANDBOX, "off", check=_never)
    assert decision.enabled is False and "verifier: off" in decision.line


def _config(tmp_path: Path, verifier: dict[str, object] | None) -> Path:
    s = scripted_arena_settings(["alpha", "beta", "gamma"], triton_grpc="127.0.0.1:9001")
    path = tmp_path / "arena.yaml"
    write_settings(path, s)
    tree = yaml.safe_load(path.read_text())
    del tree["verifier"]  # written in full: a user's file leaves it out
    if verifier is not None:
        tree["verifier"] = verifier
    path.write_text(yaml.safe_dump(tree))
    load_settings(path, {})  # a valid config either way
    return path


@pytest.mark.parametrize(
    ("verifier", "env", "choice"),
    [
        (None, {}, "auto"),
        ({"concurrency": 4}, {}, "auto"),
        ({"enabled": True}, {}, "on"),
        ({"enabled": False}, {}, "off"),
        (None, {"WARRIORCODER__VERIFIER__ENABLED": "true"}, "on"),
        ({"enabled": True}, {"WARRIORCODER__VERIFIER__ENABLED": "false"}, "off"),
    ],
)
def test_the_choice_is_what_the_config_and_its_environment_say(
    tmp_path: Path, verifier: dict[str, object] | None, env: dict[str, str], choice: str
):
    assert verifier_choice(_config(tmp_path, verifier), env) == choice


def test_no_config_means_auto():
    assert verifier_choice(None, {"WARRIORCODER__VERIFIER__ENABLED": "true"}) == "auto"


def test_the_written_config_carries_the_decision(tmp_path: Path):
    s = scripted_arena_settings(["alpha", "beta", "gamma"], triton_grpc="127.0.0.1:9001")
    assert s.verifier.enabled is False  # the services' default
    path = tmp_path / "arena.yaml"
    write_settings(path, with_verifier(s, enabled=True))
    loaded = load_settings(path, {})
    assert loaded.verifier.enabled is True
    assert loaded.verifier.sandbox == s.verifier.sandbox


async def test_the_arena_starts_the_verifier_only_when_it_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import warriorcoder.sandbox

    monkeypatch.setattr(warriorcoder.sandbox, "probe", _broken)
    off = LocalArena(tmp_path / "a", mode="scripted")
    assert (await off.decide_verifier()).enabled is False
    assert off.services == ("aggregator", "judge", "responder", "challenger")
    assert "UNVERIFIED" in off.verifier_line

    monkeypatch.setattr(warriorcoder.sandbox, "probe", _works([]))
    on = LocalArena(tmp_path / "b", mode="scripted")
    assert on.verifier_line == ""  # not decided yet
    assert (await on.decide_verifier()).enabled is True
    assert on.services == ("aggregator", "judge", "verifier", "responder", "challenger")

    never = LocalArena(tmp_path / "c", mode="scripted", verifier="off")
    monkeypatch.setattr(warriorcoder.sandbox, "probe", _never)
    assert (await never.decide_verifier()).enabled is False
    assert "verifier" not in never.services

    asked = LocalArena(tmp_path / "d", mode="scripted", verifier="on")
    monkeypatch.setattr(warriorcoder.sandbox, "probe", _broken)
    with pytest.raises(VerifierUnavailable):
        await asked.decide_verifier()
    assert not (tmp_path / "d").exists()  # refused before anything was created
