"""Helpers of the deploy checks: the render script as a module, manifests, a secured arena.

Usage::

    from tests.deploy.helpers import render, objects
    docs = objects(render.helm_template(render.ensure_tools()))

``deploy/render.py`` is a script (``deploy`` is not a package), loaded here by path so that the
tests and the script share one implementation.
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import yaml

from warriorcoder.launcher.arena import SERVICES, count_samples
from warriorcoder.launcher.config import scripted_arena_settings, write_settings
from warriorcoder.launcher.processes import (
    ManagedProcess,
    free_port,
    nats_server_binary,
    port_open,
    spawn_process,
    start_scripted_triton,
    start_service,
    wait_ready,
)
from warriorcoder.runtime.settings import DiversitySettings, VerifierSettings

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHART = ROOT / "charts" / "warriorcoder"
DASHBOARD = CHART / "files" / "dashboards" / "warriorcoder-arena.json"

Objects = list[dict[str, Any]]
Rendered = dict[str, Objects]  # value set → objects of `helm template`

# Value sets the chart is rendered with: the defaults, production, one that turns every optional
# object on (chart-made Secret, TLS, PVC, KEDA, ServiceMonitor, a Triton model), and NATS creds.
VALUE_SETS: dict[str, list[Path]] = {
    "default": [],
    "production": [CHART / "values-production.yaml"],
    "everything": [HERE / "values-everything.yaml"],
    "creds": [HERE / "values-creds.yaml"],
}


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "warriorcoder_deploy_render", ROOT / "deploy" / "render.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


render = _load_render()


# -- manifests -----------------------------------------------------------------------------------


def objects(text: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of a multi-document YAML stream."""
    return [d for d in yaml.safe_load_all(text) if d]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise KeyError(f"no {kind} {name}")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(container: dict[str, Any], secrets: Mapping[str, str]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: Secret keys looked up in ``secrets``
    and ``$(VAR)`` references to earlier variables expanded."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _VAR.sub(lambda m: env.get(m[1], m[0]), str(item["value"]))
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["key"]]
    return env


# -- a secured arena: NATS with the chart's users and permissions, the real services ------------

ARENA_MODELS = """\
models:
  - {name: alpha, strength: 9}
  - {name: beta, strength: 5}
  - {name: gamma, strength: 2}
  - {name: garbler, strength: 4, garble_first_verdicts: 1000000}  # never gives a verdict
"""


def nats_server_conf(
    *, port: int, monitor_port: int, store_dir: Path, passwords: Mapping[str, str]
) -> dict[str, Any]:
    """A nats-server config (JSON is valid NATS config) with the account, users and permissions
    of charts/warriorcoder/files/nats-permissions.yaml, plus an unrestricted ``admin``."""
    account, users = render.load_permissions()
    conf_users: list[dict[str, Any]] = [
        {
            "user": p.user,
            "password": passwords[p.service],
            "permissions": {
                "publish": {"allow": list(p.publish)},
                "subscribe": {"allow": list(p.subscribe)},
            },
        }
        for p in users.values()
    ]
    conf_users.append({"user": "admin", "password": passwords["admin"]})
    return {
        "listen": f"127.0.0.1:{port}",
        "http": f"127.0.0.1:{monitor_port}",
        "jetstream": {"store_dir": str(store_dir)},
        "accounts": {
            account: {"jetstream": "enabled", "users": conf_users},
            "SYS": {"users": [{"user": "sys", "password": passwords["sys"]}]},
        },
        "system_account": "SYS",
    }


spawn = spawn_process  # the deploy checks start Prometheus the same way


@dataclass
class SecuredArena:
    """NATS with per-service users, a scripted Triton and the five services (the verifier on),
    each connecting with the user and environment the chart gives its pod."""

    root: Path
    passwords: dict[str, str]
    procs: dict[str, ManagedProcess] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)  # server log while only services ran

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.procs['nats-server'].ports['client']}"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    def scrape_targets(self) -> dict[str, str]:
        """Prometheus job → host:port of every metrics endpoint."""
        targets = {s: f"127.0.0.1:{self.procs[s].ports['http']}" for s in SERVICES}
        targets["triton"] = f"127.0.0.1:{self.procs['tritonserver'].ports['metrics']}"
        return targets

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if not p.alive()]

    def wait_for_samples(self, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (count := count_samples(self.samples_dir)) < n:
            if dead := self.dead():
                tails = "\n".join(f"--- {d}\n{self.procs[d].log_tail()}" for d in dead)
                raise RuntimeError(f"exited: {', '.join(dead)}\n{tails}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {s}\n{self.procs[s].log_tail(1500)}" for s in SERVICES)
                raise TimeoutError(f"{count}/{n} samples after {timeout:g}s\n{logs}")
            time.sleep(0.25)
        return count

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.procs[name].stop()


def start_secured_arena(root: Path, deployments: Mapping[str, dict[str, Any]]) -> SecuredArena:
    """Start everything; ``deployments`` are the chart's rendered Deployments by service name
    (their env is what each service process gets, with the test's passwords)."""
    _, users = render.load_permissions()
    passwords = {name: "wc" + secrets.token_hex(12) for name in (*users, "admin", "sys")}
    arena = SecuredArena(root=root, passwords=passwords)
    logs = root / "logs"
    try:
        port, monitor = free_port(), free_port()
        conf = nats_server_conf(
            port=port, monitor_port=monitor, store_dir=root / "jetstream", passwords=passwords
        )
        conf_path = root / "nats-server.json"
        conf_path.write_text(json.dumps(conf, indent=2))
        nats = spawn("nats-server", [nats_server_binary(), "-c", str(conf_path)], logs / "nats.log")
        nats.ports.update(client=port, monitor=monitor)
        arena.procs["nats-server"] = nats
        wait_ready(lambda: port_open(port), nats, f"nats-server port {port}", 20)

        models_file = root / "models.yaml"
        models_file.write_text(ARENA_MODELS)
        triton = start_scripted_triton(
            models_file, ["alpha", "beta", "gamma", "garbler"], log_path=logs / "triton.log"
        )
        arena.procs["tritonserver"] = triton

        scripted = scripted_arena_settings(
            ["alpha", "beta", "gamma", "garbler"],
            triton_grpc=f"127.0.0.1:{triton.ports['grpc']}",
            nats_url=arena.nats_url,
            data_dir=root,
        )
        settings = msgspec.structs.replace(
            scripted,
            competitors=["alpha", "beta", "gamma"],
            judges=["garbler"],  # votes without a verdict: invalid votes on the dashboard
            # The diversity gate's stream and ordered consumer must pass the permissions too.
            challenger=msgspec.structs.replace(
                scripted.challenger,
                diversity=DiversitySettings(enabled=True, max_similarity=0.99),
            ),
            # The verifier's stream, consumer and user too (and its metrics on the dashboard):
            # battles go responder -> answered -> verifier -> battles.
            verifier=VerifierSettings(enabled=True),
        )
        config_path = root / "arena.yaml"
        write_settings(config_path, settings)
        secret_values = {f"{name}-password": pw for name, pw in passwords.items()}
        for service in SERVICES:
            container = pod_spec(deployments[service])["containers"][0]
            env = container_env(container, secret_values)
            arena.procs[service] = start_service(
                service, config_path, log_path=logs / f"{service}.log", env=env
            )
    except BaseException:
        arena.stop()
        raise
    return arena


# -- Prometheus ----------------------------------------------------------------------------------


def prometheus_config(targets: Mapping[str, str]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }


def prometheus_query(base_url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; the result vector (or matrix) of Prometheus' HTTP API."""
    url = f"{base_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def dashboard_queries(path: Path = DASHBOARD) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of the Grafana dashboard."""
    dashboard = json.loads(path.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["refId"], target["expr"]


def for_prometheus(expr: str, window: str = "30s") -> str:
    """A dashboard query with Grafana's variables replaced for a plain Prometheus."""
    return expr.replace("$__rate_interval", window).replace("$__interval", window)


def run_tool(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
