"""The image recipe: multi-stage, constrained install, non-root, no build tools at run time.

Docker cannot build here, so this reads the Dockerfile; the builder stage's commands are the
README's install with `-c constraints.txt` plus a wheel build, which the rest of CI exercises.
"""

from __future__ import annotations

import json
import re

from tests.deploy.helpers import ROOT, render

DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE = (ROOT / ".dockerignore").read_text().splitlines()


def _stages() -> dict[str, list[str]]:
    """Instructions (continuations joined) of each named stage."""
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    logical = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = stages.setdefault(m[2], [f"FROM {m[1]}"])
        elif current is not None:
            current.append(line)
    return stages


def test_two_stages_on_python_3_11_slim() -> None:
    stages = _stages()
    assert list(stages) == ["builder", "runtime"]
    # python 3.11 slim, pinned by digest (tests/deploy/test_image.py checks the pin's form).
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11(\.\d+)?-slim\S*@sha256:", DOCKERFILE, re.M)
    assert all(s[0] == "FROM ${PYTHON_IMAGE}" for s in stages.values())


def test_builder_builds_a_wheel_and_installs_it_with_the_constraints() -> None:
    run = " ".join(i for i in _stages()["builder"] if i.startswith("RUN"))
    assert "pip wheel --no-deps --wheel-dir /wheels ." in run
    assert "python -m venv /opt/venv" in run
    assert re.search(
        r"/opt/venv/bin/pip install -c constraints.txt .*/wheels/warriorcoder-\*\.whl", run
    )
    assert "COPY constraints.txt" in " ".join(_stages()["builder"])


def test_runtime_is_the_venv_as_uid_10001_with_the_serve_entrypoint() -> None:
    runtime = _stages()["runtime"]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    users = [i for i in runtime if i.startswith("USER")]
    assert users[-1] == "USER 10001:10001"
    (entry,) = [i for i in runtime if i.startswith("ENTRYPOINT")]
    assert json.loads(entry.removeprefix("ENTRYPOINT")) == ["warriorcoder", "serve"]
    # No compiler, package manager installs or source tree at run time.
    text = " ".join(runtime)
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "COPY . ", "COPY services"):
        assert tool not in text, tool
    values = render.chart_values()
    assert values["podSecurityContext"]["runAsUser"] == 10001
    assert f"EXPOSE {values['metrics']['port']}" in runtime


def test_dockerignore_sends_only_the_package_sources() -> None:
    assert DOCKERIGNORE[[line.strip() for line in DOCKERIGNORE].index("**")] == "**"
    allowed = {line[1:] for line in DOCKERIGNORE if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "constraints.txt", "proto/**", "services/**"}


def test_the_verifier_s_sandbox_tool_is_built_in_and_its_tests_runner_installed() -> None:
    """bubblewrap is installed in the builder (Debian's package) and only the files that install
    added reach the runtime stage, which runs no package manager; pytest, which runs the
    model-written tests inside the sandbox, is a runtime dependency of the wheel."""
    import tomllib

    builder = " ".join(i for i in _stages()["builder"] if i.startswith("RUN"))
    assert "apt-get install -y -qq --no-install-recommends bubblewrap" in builder
    assert "/usr/bin/bwrap --version" in builder
    runtime = _stages()["runtime"]
    assert "COPY --from=builder /opt/bwrap/ /" in runtime
    assert 'RUN ["bwrap", "--version"]' in runtime
    # After the venv and before the non-root user: root-owned, not writable by the services.
    assert runtime.index("COPY --from=builder /opt/bwrap/ /") < runtime.index("USER 10001:10001")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.split("=")[0].strip() == "pytest" for d in deps), deps
