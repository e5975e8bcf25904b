"""`warriorcoder up` on a machine where code cannot be sandboxed: a config that asks for the
verifier is refused before anything starts, naming why and what to install.

bubblewrap is found on ``PATH`` (``warriorcoder.sandbox.probe``): a ``PATH`` without it is a
machine without bubblewrap, with the real CLI and the real probe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import arena_tree


def _up(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    (tmp_path / "empty-bin").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "warriorcoder.cli", "up", "--data-dir", str(tmp_path / "data"),
         "--plain", "--port", "0", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_a_config_asking_for_the_verifier_without_bubblewrap_is_refused(tmp_path: Path):
    tree = arena_tree("127.0.0.1:1")  # never reached: nothing starts
    tree["verifier"] = {"enabled": True}
    config = tmp_path / "arena.yaml"
    config.write_text(yaml.safe_dump(tree))
    proc = _up(tmp_path, "--config", str(config), "--battles", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "verifier.enabled is true" in proc.stderr
    assert "bubblewrap (bwrap) is not installed" in proc.stderr  # why
    assert "apt-get install bubblewrap" in proc.stderr  # what to install
    assert "starting:" not in proc.stdout
    assert not (tmp_path / "data").exists()  # nothing was started or created
