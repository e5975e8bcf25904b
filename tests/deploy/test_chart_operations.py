"""The chart as operators expect it: readiness that does not block drains, aggregator storage
that can attach, values checked by a schema, rollouts on changed Secrets, a `helm test`, and the
NATS values rendered by the real NATS chart they are written for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import SecuredArena
from tests.deploy.helpers import (
    ROOT,
    VALUE_SETS,
    Rendered,
    named,
    objects,
    of_kind,
    pod_spec,
    render,
    run_tool,
)
from warriorcoder.launcher.processes import free_port, nats_server_binary

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="deploy checks run in `tox -e deploy` (needs kubernetes-validate)"
)

SCHEMA = render.CHART / "values.schema.json"
HELM_TEST = render.CHART / "files" / "helm-test.py"
NATS_CHART_VERSION = "2.14.2"
SERVICES = render.SERVICES  # pipeline order, as the chart lists them
NATS_CHART = Path(__file__).parent / "charts" / f"nats-{NATS_CHART_VERSION}.tgz"


def _fails(tools: Any, *sets: str) -> str:
    """stderr of a `helm template` that must fail."""
    argv: list[str | Path] = [tools.helm, "template", "w", render.CHART]
    for s in sets:
        argv += ["--set", s]
    proc = run_tool(*argv)
    assert proc.returncode != 0, f"{sets} rendered"
    return proc.stderr


def _template(tools: Any, *sets: str, tests: bool = False) -> list[dict[str, Any]]:
    return objects(render.helm_template(tools, sets=sets, tests=tests))


# -- readiness and disruption budgets -------------------------------------------------------------


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_every_disruption_budget_lets_unready_pods_be_evicted(
    rendered: Rendered, values: str
) -> None:
    """A pod that is not Ready never holds a node drain (the PDB's default, IfHealthyBudget,
    refuses to evict it while the budget is spent, e.g. every pod NotReady at once)."""
    pdbs = of_kind(rendered[values], "PodDisruptionBudget")
    assert len(pdbs) >= len(SERVICES)
    for pdb in pdbs:
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", pdb["metadata"]
        assert "maxUnavailable" in pdb["spec"]  # one replica never blocks a drain either


# -- aggregator storage ---------------------------------------------------------------------------


def _aggregator(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return named(objs, "Deployment", "warriorcoder-aggregator")


def test_the_aggregator_on_a_single_node_claim_is_replaced_not_surged(tools: Any) -> None:
    default = _aggregator(_template(tools))
    assert default["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    for modes in ("{ReadWriteOnce}", "{ReadWriteOncePod}"):
        objs = _template(
            tools,
            "services.aggregator.persistence.enabled=true",
            f"services.aggregator.persistence.accessModes={modes}",
        )
        assert _aggregator(objs)["spec"]["strategy"] == {"type": "Recreate"}, modes
        claim = named(objs, "PersistentVolumeClaim", "warriorcoder-samples")
        assert claim["spec"]["accessModes"] == [modes.strip("{}")]
    # An existing claim is described by the same access modes.
    existing = _aggregator(
        _template(
            tools,
            "services.aggregator.persistence.enabled=true",
            "services.aggregator.persistence.existingClaim=samples",
        )
    )
    assert existing["spec"]["strategy"] == {"type": "Recreate"}
    # The other services keep surging.
    assert named(_template(tools), "Deployment", "warriorcoder-judge")["spec"]["strategy"][
        "type"
    ] == ("RollingUpdate")


def test_a_shared_claim_lets_several_aggregators_roll(rendered: Rendered) -> None:
    for values in ("production", "everything"):
        objs = rendered[values]
        claim_modes = yaml.safe_load((VALUE_SETS[values][0]).read_text())["services"]["aggregator"][
            "persistence"
        ]["accessModes"]
        assert claim_modes == ["ReadWriteMany"]
        assert _aggregator(objs)["spec"]["strategy"]["type"] == "RollingUpdate"
        scaled = named(objs, "ScaledObject", "warriorcoder-aggregator")
        assert scaled["spec"]["maxReplicaCount"] > 1


def test_impossible_aggregator_storage_fails_with_the_reason(tools: Any) -> None:
    rwo = "services.aggregator.persistence.enabled=true"
    assert "services.aggregator.replicas=2 with persistence.accessModes [ReadWriteOnce]" in (
        _fails(tools, rwo, "services.aggregator.replicas=2")
    )
    assert "services.aggregator.autoscaling.maxReplicas=4" in _fails(
        tools, rwo, "keda.enabled=true", "services.aggregator.autoscaling.enabled=true"
    )
    assert "the surged pod cannot attach the claim" in _fails(
        tools, rwo, "services.aggregator.strategy=RollingUpdate"
    )
    # What can work renders: one pod with KEDA capped at one, or a ReadWriteMany claim.
    for sets in (
        (
            rwo,
            "keda.enabled=true",
            "services.aggregator.autoscaling.enabled=true",
            "services.aggregator.autoscaling.maxReplicas=1",
        ),
        (
            rwo,
            "services.aggregator.persistence.accessModes={ReadWriteMany}",
            "services.aggregator.replicas=3",
        ),
        ("services.aggregator.replicas=3",),  # emptyDir: a directory per pod
    ):
        assert _template(tools, *sets), sets


# -- values schema --------------------------------------------------------------------------------


def test_an_unknown_or_ill_typed_value_fails_naming_the_key(tools: Any) -> None:
    cases = {
        "keda.enable=true": "at '/keda': additional properties 'enable' not allowed",
        "services.judge.replica=2": "additional properties 'replica' not allowed",
        "services.judge.replicas=-1": "/services/judge/replicas",
        "metrics.port=http": "/metrics/port",
        "image.pullPolicy=Sometimes": "/image/pullPolicy",
        "services.aggregator.strategy=Rolling": "/services/aggregator/strategy",
        "triton.models.qwen.gpu=4": "additional properties 'gpu' not allowed",
        "probes.readiness.httpGet.path=/": "additional properties 'httpGet' not allowed",
    }
    for setting, message in cases.items():
        assert message in _fails(tools, setting), setting


def _schema_at(schema: dict[str, Any], node: dict[str, Any], path: list[str]) -> bool:
    """Whether ``path`` (keys under ``node``) is allowed by the schema."""
    if not path:
        return True
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    props = node.get("properties", {})
    if path[0] in props:
        return _schema_at(schema, props[path[0]], path[1:])
    extra = node.get("additionalProperties", node.get("type") == "object")
    if isinstance(extra, dict):
        return _schema_at(schema, extra, path[1:])
    return bool(extra)


def test_every_value_the_templates_read_is_in_the_schema() -> None:
    """A key a template reads but the schema forbids could never be set; one the values files
    set but the schema forbids fails every install. Both are caught here, before a user is."""
    schema = json.loads(SCHEMA.read_text())
    read: set[tuple[str, ...]] = set()
    for template in (render.CHART / "templates").rglob("*"):
        if template.suffix not in (".yaml", ".tpl", ".txt"):
            continue
        text = template.read_text()
        for chain in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
            read.add(tuple(chain.strip(".").split(".")))
    # The entries of triton.models are read through `$m` in triton.yaml (`.m` in its helpers).
    triton = (render.CHART / "templates" / "triton.yaml").read_text()
    helpers = (render.CHART / "templates" / "_helpers.tpl").read_text()
    for key in {
        *re.findall(r"\$m\.([A-Za-z_][A-Za-z0-9_]*)", triton),
        *re.findall(r"\.m\.([A-Za-z_][A-Za-z0-9_]*)", helpers),
    }:
        read.add(("triton", "models", "anymodel", key))
    assert len(read) > 30
    missing = [".".join(p) for p in sorted(read) if not _schema_at(schema, schema, list(p))]
    assert not missing, f"values.schema.json does not allow: {missing}"

    def leaves(data: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        if isinstance(data, dict) and data and path[:1] != ("arena",):
            return [leaf for k, v in data.items() for leaf in leaves(v, (*path, k))]
        return [path]

    for values in ("values.yaml", "values-production.yaml"):
        data = yaml.safe_load((render.CHART / values).read_text())
        bad = [".".join(p) for p in leaves(data) if not _schema_at(schema, schema, list(p))]
        assert not bad, f"{values}: {bad}"


# -- rollouts on changed inputs -------------------------------------------------------------------


def _pod_annotations(objs: list[dict[str, Any]], service: str) -> dict[str, str]:
    annotations: dict[str, str] = named(objs, "Deployment", f"warriorcoder-{service}")["spec"][
        "template"
    ]["metadata"]["annotations"]
    return annotations


def test_pods_roll_when_the_config_or_the_chart_made_secret_changes(tools: Any) -> None:
    made = [
        "nats.auth.existingSecret=",
        *(f"nats.auth.users.{s}.password=pw-{s}" for s in SERVICES),
    ]
    before = _template(tools, *made)
    after = _template(tools, *made[:-1], "nats.auth.users.aggregator.password=changed")
    config = _template(tools, *made, "arena.service.max_in_flight=7")
    for service in SERVICES:
        a, b = _pod_annotations(before, service), _pod_annotations(after, service)
        assert re.fullmatch(r"[0-9a-f]{64}", a["checksum/secret"]), a
        assert a["checksum/secret"] != b["checksum/secret"], service
        assert a["checksum/config"] == b["checksum/config"], service
        c = _pod_annotations(config, service)
        assert c["checksum/config"] != a["checksum/config"], service
        assert c["checksum/secret"] == a["checksum/secret"], service
    # An existing Secret is not the chart's to watch (docs/deploy.md: restart after changing it).
    assert "checksum/secret" not in _pod_annotations(_template(tools), "judge")


def test_triton_pods_roll_when_the_chart_writes_another_model_repository(
    tools: Any, tmp_path: Path
) -> None:
    """Triton reads its model repository (the chart's ConfigMap) only at start: its pods carry a
    checksum of exactly what the chart writes there, so a changed value or a changed template
    (a new chart version adding a model parameter) rolls them."""
    model = "triton.models.deepseek"
    sets = [
        "triton.weights.existingClaim=w",
        f"{model}.tritonModel=deepseek_coder_v2_lite_instruct",
        f"{model}.model=/weights/deepseek",
        f"{model}.gpus=1",
    ]

    def checksums(chart: Path, *extra: str) -> dict[str, str]:
        argv: list[str | Path] = [tools.helm, "template", "warriorcoder", chart]
        for s in (*sets, *extra):
            argv += ["--set", s]
        proc = run_tool(*argv)
        assert proc.returncode == 0, proc.stderr
        dep = named(objects(proc.stdout), "Deployment", "warriorcoder-triton-deepseek")
        annotations: dict[str, str] = dep["spec"]["template"]["metadata"]["annotations"]
        return annotations

    base = checksums(render.CHART)
    assert re.fullmatch(r"[0-9a-f]{64}", base["checksum/repository"])
    engine = checksums(render.CHART, f"{model}.engineArgs.max_model_len=8192")
    assert engine["checksum/repository"] != base["checksum/repository"]
    # The same values with a template that writes one more line into config.pbtxt.
    chart = tmp_path / "warriorcoder"
    shutil.copytree(render.CHART, chart)
    helpers = chart / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    marker = '  backend: "vllm"\n'
    assert text.count(marker) == 1
    helpers.write_text(text.replace(marker, marker + "  # a new chart version\n"))
    changed = checksums(chart)
    assert changed["checksum/model"] == base["checksum/model"]
    assert changed["checksum/repository"] != base["checksum/repository"]


# -- helm test ------------------------------------------------------------------------------------


def _hooks(tools: Any, *sets: str) -> list[dict[str, Any]]:
    return [
        o
        for o in _template(tools, *sets, tests=True)
        if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]


def test_helm_test_checks_nats_and_every_enabled_service(tools: Any) -> None:
    hooks = _hooks(tools)
    (pod,) = of_kind(hooks, "Pod")
    (policy,) = of_kind(hooks, "NetworkPolicy")
    for obj in hooks:
        kubernetes_validate.validate(obj, render.KUBE_VERSION, strict=True)
        policy_ = obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
        assert "hook-succeeded" in policy_.split(","), obj["metadata"]["name"]
    # Not part of a deployment: `helm template --skip-tests` (deploy/k8s) leaves them out.
    assert not [o for o in _template(tools) if o["kind"] == "Pod"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["resources"]["limits"]["memory"]
    assert c["command"][:2] == ["python", "-c"]
    assert c["command"][2].strip() == HELM_TEST.read_text().strip()
    assert c["args"] == ["nats://nats:4222"] + [f"http://warriorcoder-{s}:9090" for s in SERVICES]
    # The test Pod may reach the services' metrics port only through its own, temporary policy.
    labels = pod["metadata"]["labels"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert rule["ports"] == [{"port": 9090, "protocol": "TCP"}]
    (expr,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert sorted(expr["values"]) == sorted(SERVICES)
    assert pod["spec"]["containers"][0]["image"] == "warriorcoder:0.1.0"
    # A disabled service is not checked; no network policy, no test policy.
    hooks = _hooks(tools, "services.verifier.enabled=false", "networkPolicy.enabled=false")
    (pod,) = hooks
    assert "http://warriorcoder-verifier:9090" not in pod["spec"]["containers"][0]["args"]


def _run_helm_test(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_proxy")}
    return subprocess.run(
        [sys.executable, "-c", HELM_TEST.read_text(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_the_helm_test_passes_on_a_running_arena_and_names_what_is_down(
    secured_arena: SecuredArena,
) -> None:
    """files/helm-test.py, as the test Pod runs it, against the real services and NATS."""
    services = [f"http://127.0.0.1:{secured_arena.procs[s].ports['http']}" for s in SERVICES]
    proc = _run_helm_test(secured_arena.nats_url, *services)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok   http://") == len(SERVICES), proc.stdout
    assert f"ok   nats {secured_arena.nats_url}" in proc.stdout

    closed = free_port()
    proc = _run_helm_test(f"nats://127.0.0.1:{closed}", services[0], f"http://127.0.0.1:{closed}")
    assert proc.returncode == 1
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 4, proc.stdout  # NATS, then /healthz, /readyz, /statusz
    assert f"FAIL nats nats://127.0.0.1:{closed}" in failures[0]


# -- the NATS values on the real NATS chart -------------------------------------------------------


def _nats_objects(tools: Any) -> list[dict[str, Any]]:
    argv = [tools.helm, "template", "nats", NATS_CHART, "--namespace", "warriorcoder"]
    argv += ["--kube-version", render.KUBE_VERSION, "--values", render.NATS_VALUES]
    proc = run_tool(*argv)
    assert proc.returncode == 0, proc.stderr
    return objects(proc.stdout)


def _gib(quantity: str) -> float:
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10, "KiB": 2**-20, "MiB": 2**-10}
    units |= {"GiB": 1, "TiB": 2**10}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]+)", quantity)
    assert match, quantity
    return float(match[1]) * units[match[2]]


def test_the_vendored_nats_chart_is_the_pinned_version() -> None:
    with tarfile.open(NATS_CHART) as tgz:
        member = tgz.extractfile("nats/Chart.yaml")
        assert member is not None
        chart = yaml.safe_load(member.read())
    assert (chart["name"], chart["version"]) == ("nats", NATS_CHART_VERSION)
    pinned = f"nats/nats --version {NATS_CHART_VERSION}"
    for doc in ("README.md", "docs/deploy.md", "charts/warriorcoder/README.md"):
        text = (ROOT / doc).read_text()
        assert pinned in text, doc
    values = render.NATS_VALUES.read_text()
    assert f"chart `nats` {NATS_CHART_VERSION}" in values and "1.x" not in values
    # The stale helper script is not referred to any more.
    for path in (*render.CHART.rglob("*.yaml"), render.NATS_VALUES, ROOT / "docs" / "deploy.md"):
        assert "create-auth-secret.sh" not in path.read_text(), path


def test_nats_servers_get_resources_and_a_go_memory_limit_as_the_chart_recommends(
    tools: Any,
) -> None:
    objs = _nats_objects(tools)
    for obj in objs:
        kubernetes_validate.validate(obj, render.KUBE_VERSION, strict=True)
    (sts,) = of_kind(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    (nats,) = [c for c in pod_spec(sts)["containers"] if c["name"] == "nats"]
    res = nats["resources"]
    # requests = limits (Guaranteed QoS; GOMAXPROCS from the CPU limit), >= 2 cores and 8Gi.
    assert res["requests"] == res["limits"], res
    assert int(res["limits"]["cpu"]) >= 2
    limit = _gib(res["limits"]["memory"])
    assert limit >= 8
    env = {e["name"]: e for e in nats["env"]}
    gomemlimit = _gib(env["GOMEMLIMIT"]["value"])
    assert 0.7 * limit <= gomemlimit <= 0.9 * limit, (gomemlimit, limit)
    assert env["WARRIORCODER_JUDGE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": render.nats_secret_name(),
        "key": "judge-password",
    }


def test_the_nats_config_the_chart_renders_is_valid_for_nats_server(
    tools: Any, tmp_path: Path
) -> None:
    """`nats-server -t` on the nats.conf that the real chart renders from deploy/nats/values.yaml,
    with the password variables the StatefulSet's environment provides."""
    objs = _nats_objects(tools)
    (cm,) = [o for o in of_kind(objs, "ConfigMap") if "nats.conf" in o["data"]]
    conf = tmp_path / "nats.conf"
    conf.write_text(cm["data"]["nats.conf"])
    (sts,) = of_kind(objs, "StatefulSet")
    (nats,) = [c for c in pod_spec(sts)["containers"] if c["name"] == "nats"]
    env = {"PATH": os.environ.get("PATH", "")}
    for e in nats["env"]:
        env[e["name"]] = e.get("value", "wc" + e["name"].lower())
    env["POD_NAME"] = env["SERVER_NAME"] = "nats-0"
    proc = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # Without the Secret's passwords the server refuses the config: the check is real.
    del env["WARRIORCODER_JUDGE_PASSWORD"]
    proc = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0


# -- documentation --------------------------------------------------------------------------------


def test_install_commands_create_the_namespace() -> None:
    """Every documented `helm install`/`helm upgrade --install` into a namespace works on a
    fresh cluster: the block creates the namespace, or helm does (--create-namespace)."""
    docs = [ROOT / "README.md", ROOT / "docs" / "deploy.md", render.CHART / "README.md"]
    checked = 0
    for doc in docs:
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", doc.read_text(), re.S):
            if not re.search(r"helm (upgrade --install|install) ", block):
                continue
            if not re.search(r" -n |--namespace", block):
                continue
            checked += 1
            assert "--create-namespace" in block or "kubectl create namespace" in block, (
                f"{doc.relative_to(ROOT)}:\n{block}"
            )
    assert checked >= 3
