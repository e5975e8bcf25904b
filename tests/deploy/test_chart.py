"""The Helm chart: lint, schema validation of every rendered object, hardening, wiring.

Rendered with four value sets (conftest.VALUES): the defaults, values-production.yaml, one that
turns every optional object on, and NATS creds auth. Core Kubernetes objects are validated with
kubernetes-validate (offline schemas, strict: unknown fields fail) against Kubernetes 1.35, the
version of the kubectl used here. ServiceMonitor and ScaledObject are CRDs with no schema there:
they are checked structurally below (apiVersion, selectors and targets that resolve).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    DASHBOARD,
    VALUE_SETS,
    Rendered,
    named,
    objects,
    of_kind,
    pod_spec,
    render,
    run_tool,
)
from warriorcoder.proto import topology
from warriorcoder.runtime.settings import load_settings

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="deploy checks run in `tox -e deploy` (needs kubernetes-validate)"
)

SETS = list(VALUE_SETS)
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
# stage -> (stream, durable consumer), as the topology declares them
STAGES = {c.stage: (c.stream, c.durable) for c in topology.CONSUMERS}


def _containers(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for o in objs:
        if o["kind"] in WORKLOADS:
            spec = pod_spec(o)
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                out.append((o["metadata"]["name"], spec, c))
    return out


def _arena_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = named(objs, "ConfigMap", "warriorcoder-config")
    config: dict[str, Any] = yaml.safe_load(cm["data"]["arena.yaml"])
    return config


@pytest.mark.parametrize("values", [[], ["values-production.yaml"]], ids=["default", "production"])
def test_helm_lint(tools: Any, values: list[str]) -> None:
    args = [f"--values={render.CHART / v}" for v in values]
    proc = run_tool(tools.helm, "lint", "--strict", render.CHART, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", SETS)
def test_every_object_matches_its_kubernetes_schema(rendered: Rendered, values: str) -> None:
    errors = []
    validated = 0
    for obj in rendered[values]:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, render.KUBE_VERSION, strict=True)
            validated += 1
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {e}")
    assert not errors, "\n".join(errors)
    assert validated >= 15


@pytest.mark.parametrize("values", SETS)
def test_every_object_is_known(rendered: Rendered, values: str) -> None:
    """Only core kinds (schema-validated) and the two CRDs (checked structurally) are rendered."""
    kinds = {(o["apiVersion"], o["kind"]) for o in rendered[values]}
    core = {
        ("v1", k)
        for k in ("ConfigMap", "Secret", "Service", "ServiceAccount", "PersistentVolumeClaim")
    } | {
        ("apps/v1", "Deployment"),
        ("policy/v1", "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    }
    assert kinds <= core | CRDS, kinds - core - CRDS


@pytest.mark.parametrize("values", SETS)
def test_every_container_is_hardened_with_resources_and_probes(
    rendered: Rendered, values: str
) -> None:
    containers = _containers(rendered[values])
    assert containers
    for workload, spec, c in containers:
        where = f"{values}: {workload}/{c['name']}"
        sc = c.get("securityContext", {})
        psc = spec.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True or psc.get("runAsNonRoot") is True, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
        assert sc.get("privileged") in (None, False), where
        seccomp = sc.get("seccompProfile") or psc.get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}, where
        assert psc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        res = c.get("resources", {})
        assert res.get("requests", {}).get("cpu"), where
        assert res.get("requests", {}).get("memory"), where
        assert res.get("limits", {}).get("memory"), where
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c.get(probe, {}).get("httpGet"), f"{where}: {probe}"
        # A writable /tmp on a read-only root.
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert "emptyDir" in volumes[mounts["/tmp"]], where
        assert spec.get("automountServiceAccountToken") is False, where
        assert "hostNetwork" not in spec and "hostPID" not in spec, where


@pytest.mark.parametrize("values", SETS)
def test_services_probe_the_metrics_port_and_outlive_their_drain(
    rendered: Rendered, values: str
) -> None:
    objs = rendered[values]
    config = _arena_config(objs)
    port = config["service"]["http_port"]
    drain = config["service"].get("drain_timeout_s", 25)
    for service in render.SERVICES:
        dep = named(objs, "Deployment", f"warriorcoder-{service}")
        spec = pod_spec(dep)
        (c,) = spec["containers"]
        assert c["args"][:3] == [service, "--config", "/etc/warriorcoder/arena.yaml"]
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert spec["terminationGracePeriodSeconds"] > drain
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/etc/warriorcoder" in mounts
        if service == "aggregator":
            assert config["data_dir"] in mounts  # writable data_dir on a read-only root
        # A metrics Service and a disruption budget per service.
        svc = named(objs, "Service", f"warriorcoder-{service}")
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        assert svc["spec"]["ports"][0]["name"] == "metrics"
        pdb = named(objs, "PodDisruptionBudget", f"warriorcoder-{service}")
        assert pdb["spec"]["selector"] == dep["spec"]["selector"]
        assert named(objs, "ServiceAccount", "warriorcoder")
        assert spec["serviceAccountName"] == "warriorcoder"


@pytest.mark.parametrize("values", SETS)
def test_arena_config_is_valid_for_the_services(
    rendered: Rendered, values: str, tmp_path: Path
) -> None:
    """The ConfigMap's arena.yaml loads with the services' own strict settings, with the NATS
    user and password the pods get from their environment."""
    objs = rendered[values]
    path = tmp_path / "arena.yaml"
    path.write_text(named(objs, "ConfigMap", "warriorcoder-config")["data"]["arena.yaml"])
    env = {"WARRIORCODER__NATS__USER": "judge", "WARRIORCODER__NATS__PASSWORD": "'0123'"}
    settings = load_settings(path, env)
    assert settings.nats.password is not None and settings.nats.password.reveal() == "0123"
    assert settings.service.http_port == 9090
    if values == "production":
        # Every model calls the chart's Triton Service of that model on gRPC.
        for name, model in settings.models.items():
            # dns:///<name>-headless:8001: the headless Service beside the Triton Service <name>
            host, port = model.triton_url.removeprefix("dns:///").split(":")
            host = host.removesuffix("-headless")
            svc = named(objs, "Service", host)
            assert int(port) in [p["port"] for p in svc["spec"]["ports"]], name
            cm = named(objs, "ConfigMap", host)
            assert f'name: "{model.triton_model}"' in cm["data"]["config.pbtxt"]


def test_default_pods_get_their_nats_user_and_password_from_the_shared_secret(
    rendered: Rendered,
) -> None:
    objs = rendered["default"]
    assert not of_kind(objs, "Secret")  # existingSecret: created before NATS (docs/deploy.md)
    for service in render.SERVICES:
        (c,) = pod_spec(named(objs, "Deployment", f"warriorcoder-{service}"))["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["WARRIORCODER__NATS__USER"]["value"] == service
        ref = env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": render.nats_secret_name(), "key": f"{service}-password"}
        assert env["WARRIORCODER__NATS__PASSWORD"]["value"] == "'$(NATS_PASSWORD)'"


def test_chart_creates_the_secret_and_mounts_tls_when_asked(rendered: Rendered) -> None:
    objs = rendered["everything"]
    (secret,) = of_kind(objs, "Secret")
    assert sorted(secret["stringData"]) == sorted(f"{s}-password" for s in render.SERVICES)
    config = _arena_config(objs)
    assert config["nats"]["tls_ca_file"] == "/etc/warriorcoder/nats-tls/ca.crt"
    assert config["shard_max_samples"] == 1000000  # not 1e+06
    for service in render.SERVICES:
        spec = pod_spec(named(objs, "Deployment", f"warriorcoder-{service}"))
        (config_volume,) = [v for v in spec["volumes"] if v["name"] == "config"]
        names = [s.get("secret", {}).get("name") for s in config_volume["projected"]["sources"]]
        assert secret["metadata"]["name"] in [
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in spec["containers"][0]["env"]
            if "valueFrom" in e
        ]
        assert {"nats-ca", "warriorcoder-nats-client"} <= set(names)
    claim = named(objs, "PersistentVolumeClaim", "warriorcoder-samples")
    agg = pod_spec(named(objs, "Deployment", "warriorcoder-aggregator"))
    (samples,) = [v for v in agg["volumes"] if v["name"] == "samples"]
    assert samples["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_creds_auth_mounts_one_creds_file_per_service(rendered: Rendered) -> None:
    objs = rendered["creds"]
    assert _arena_config(objs)["nats"]["creds_file"] == "/etc/warriorcoder/nats/nats.creds"
    for service in render.SERVICES:
        spec = pod_spec(named(objs, "Deployment", f"warriorcoder-{service}"))
        sources = next(v for v in spec["volumes"] if v["name"] == "config")["projected"]["sources"]
        items = [i for s in sources if "secret" in s for i in s["secret"]["items"]]
        assert {"key": f"{service}.creds", "path": "nats/nats.creds"} in items
        assert "NATS_PASSWORD" not in {e["name"] for e in spec["containers"][0].get("env", [])}


@pytest.mark.parametrize("values", ["production", "everything"])
def test_keda_scales_each_stage_on_its_own_stream_and_consumer(
    rendered: Rendered, values: str
) -> None:
    objs = rendered[values]
    scaled = {o["metadata"]["name"]: o for o in of_kind(objs, "ScaledObject")}
    assert sorted(scaled) == sorted(f"warriorcoder-{s}" for s in STAGES)
    for stage, (stream, consumer) in STAGES.items():
        so = scaled[f"warriorcoder-{stage}"]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        target = so["spec"]["scaleTargetRef"]
        dep = named(objs, "Deployment", target["name"])
        assert target["kind"] == "Deployment" and target["apiVersion"] == "apps/v1"
        assert "replicas" not in dep["spec"], "KEDA owns the replica count"
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert (meta["stream"], meta["consumer"]) == (stream, consumer)
        assert meta["account"] == render.load_permissions()[0]
        assert re.fullmatch(r"[a-z0-9.-]+:8222", meta["natsServerMonitoringEndpoint"])
        assert all(isinstance(v, str) for v in meta.values())
        assert int(meta["lagThreshold"]) > 0
    # The challenger produces; it is never autoscaled on a consumer.
    assert "replicas" in named(objs, "Deployment", "warriorcoder-challenger")["spec"]


@pytest.mark.parametrize("values", ["production", "everything"])
def test_service_monitor_selects_every_metrics_service(rendered: Rendered, values: str) -> None:
    objs = rendered[values]
    (sm,) = of_kind(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    selector = sm["spec"]["selector"]["matchLabels"]
    (endpoint,) = sm["spec"]["endpoints"]
    selected = [
        s
        for s in of_kind(objs, "Service")
        if selector.items() <= s["metadata"]["labels"].items()
        and endpoint["port"] in [p["name"] for p in s["spec"]["ports"]]
    ]
    names = {s["metadata"]["name"] for s in selected}
    assert {f"warriorcoder-{s}" for s in render.SERVICES} <= names
    tritons = {
        d["metadata"]["name"]
        for d in of_kind(objs, "Deployment")
        if "triton" in d["metadata"]["name"]
    }
    assert {f"{t}-metrics" for t in tritons} <= names
    assert endpoint["path"] == "/metrics"


def test_production_serves_the_five_experts_on_triton_sized_by_model(rendered: Rendered) -> None:
    objs = rendered["production"]
    gpus = {}
    for dep in of_kind(objs, "Deployment"):
        if dep["metadata"]["labels"].get("app.kubernetes.io/component") != "triton":
            continue
        key = dep["metadata"]["labels"]["warriorcoder.io/model"]
        spec = pod_spec(dep)
        (c,) = spec["containers"]
        assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-vllm-python-py3", c["image"])
        res = c["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
        gpus[key] = res["limits"]["nvidia.com/gpu"]
        # Start-up may take 30 minutes (weights of a 72B model); liveness waits for it.
        startup = c["startupProbe"]
        assert startup["failureThreshold"] * startup["periodSeconds"] >= 1800
        assert startup["httpGet"]["path"] == "/v2/health/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert sorted(p["containerPort"] for p in c["ports"]) == [8000, 8001, 8002]
        # The model repository comes from volumes: the chart's config, the weights' claim.
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["weights"]["persistentVolumeClaim"]["readOnly"] is True
        cm = named(objs, "ConfigMap", volumes["repository"]["configMap"]["name"])
        engine = json.loads(cm["data"]["model.json"])
        assert engine["tensor_parallel_size"] == gpus[key]
        assert engine["model"].startswith("/weights/")
        assert 'backend: "vllm"' in cm["data"]["config.pbtxt"]
        assert named(objs, "Service", f"{dep['metadata']['name']}-metrics")
        assert named(objs, "PodDisruptionBudget", dep["metadata"]["name"])
    assert gpus == {"athene": 4, "deepseek": 1, "llama": 4, "qwen": 4, "qwq": 2}


@pytest.mark.parametrize("values", ["default", "everything"])
def test_network_policies_allow_only_nats_triton_dns_out_and_prometheus_in(
    rendered: Rendered, values: str
) -> None:
    objs = rendered[values]
    policy = named(objs, "NetworkPolicy", "warriorcoder-services")
    spec = policy["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    selects = spec["podSelector"]["matchExpressions"][0]
    assert selects["key"] == "app.kubernetes.io/component"
    # The services that call models; the verifier has its own, narrower policy (below).
    assert sorted(selects["values"]) == sorted(render.MODEL_SERVICES)
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": 9090, "protocol": "TCP"}]
    (peer,) = ingress["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    egress_ports = sorted(
        (p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]
    )
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (4222, "TCP"), (8001, "TCP")]
    for rule in spec["egress"]:
        assert rule["to"] and all(
            peer.get("podSelector", {}).get("matchLabels") for peer in rule["to"]
        )


def test_dashboard_configmap_carries_the_dashboard_for_the_grafana_sidecar(
    rendered: Rendered,
) -> None:
    cm = named(rendered["default"], "ConfigMap", "warriorcoder-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["warriorcoder-arena.json"]) == json.loads(DASHBOARD.read_text())


def test_bad_values_fail_with_the_key_named(tools: Any) -> None:
    cases = {
        "terminationGracePeriodSeconds=20": "must exceed arena.service.drain_timeout_s",
        "nats.auth.existingSecret=": "nats.auth.users.challenger.password is required",
        "nats.auth.type=token": "nats.auth.type must be password, creds or none",
        (
            "triton.models.nosuch.gpus=1,triton.models.nosuch.tritonModel=x,"
            "triton.models.nosuch.model=/w,triton.weights.existingClaim=w"
        ): "triton.models.nosuch has no arena.models.nosuch",
    }
    for setting, message in cases.items():
        proc = run_tool(tools.helm, "template", "w", render.CHART, "--set", setting)
        assert proc.returncode != 0 and message in proc.stderr, (setting, proc.stderr)


def _documented(lines: list[str]) -> list[str]:
    """Keys of a values file with no comment above them, on them, or above an ancestor."""
    missing = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    previous = ""
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("- "):
            previous = stripped or previous
            continue
        if stripped.startswith("#"):
            previous = stripped
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.\-/\"]+):", line)
        if not match:
            previous = stripped
            continue
        indent = len(match[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        own = previous.startswith("#") or " # " in line
        inherited = any(doc for _, doc in stack)
        if not (own or inherited):
            missing.append(line.rstrip())
        stack.append((indent, own or inherited))
        previous = stripped
    return missing


def test_every_value_is_documented() -> None:
    for name in ("values.yaml", "values-production.yaml"):
        lines = (render.CHART / name).read_text().splitlines()
        assert not _documented(lines), f"{name}: undocumented keys:\n" + "\n".join(
            _documented(lines)
        )


# -- the verifier ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "everything"])
def test_the_verifier_may_reach_only_nats_and_dns(rendered: Rendered, values: str) -> None:
    """The pod that runs untrusted code: egress to NATS (and DNS to find it), nothing else; only
    Prometheus in; and no other policy selects it (NetworkPolicies add up)."""
    objs = rendered[values]
    spec = named(objs, "NetworkPolicy", "warriorcoder-verifier")["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "verifier"
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert [p["podSelector"]["matchLabels"] for p in ingress["from"]] == [
        {"app.kubernetes.io/name": "prometheus"}
    ]
    nats, dns = spec["egress"]
    assert [p["podSelector"]["matchLabels"] for p in nats["to"]] == [
        {"app.kubernetes.io/name": "nats"}
    ]
    assert nats["ports"] == [{"port": 4222, "protocol": "TCP"}]
    assert [p["podSelector"]["matchLabels"] for p in dns["to"]] == [{"k8s-app": "kube-dns"}]
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == [(53, "TCP"), (53, "UDP")]
    pod = named(objs, "Deployment", "warriorcoder-verifier")["spec"]["template"]["metadata"]
    for policy in of_kind(objs, "NetworkPolicy"):
        if policy["metadata"]["name"] == "warriorcoder-verifier":
            continue
        selector = policy["spec"]["podSelector"]
        labels = pod["labels"]
        matches = selector.get("matchLabels", {}).items() <= labels.items() and all(
            labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
        )
        assert not matches, policy["metadata"]["name"]


def test_the_verifier_runs_where_the_values_say_with_the_gvisor_option(rendered: Rendered) -> None:
    """`services.verifier.runtimeClassName` sets the verifier pods' RuntimeClass (gVisor in
    production), no other pod's; the default is the cluster's runtime."""
    for values, expected in (("default", None), ("production", "gvisor"), ("everything", "gvisor")):
        objs = rendered[values]
        for dep in of_kind(objs, "Deployment"):
            component = dep["metadata"]["labels"]["app.kubernetes.io/component"]
            runtime = pod_spec(dep).get("runtimeClassName")
            assert runtime == (expected if component == "verifier" else None), (values, component)
        (c,) = pod_spec(named(objs, "Deployment", "warriorcoder-verifier"))["containers"]
        assert c["args"][0] == "verifier"
    # It calls no model: the chart's Triton servers take gRPC only from the model callers.
    triton = named(rendered["everything"], "NetworkPolicy", "warriorcoder-triton")["spec"]
    grpc = next(r for r in triton["ingress"] if r["ports"] == [{"port": 8001, "protocol": "TCP"}])
    (callers,) = grpc["from"]
    (expr,) = callers["podSelector"]["matchExpressions"]
    assert sorted(expr["values"]) == sorted(render.MODEL_SERVICES)


@pytest.mark.parametrize("values", SETS)
def test_the_arena_config_verifies_exactly_when_the_verifier_is_deployed(
    rendered: Rendered, values: str
) -> None:
    objs = rendered[values]
    deployed = any(
        d["metadata"]["name"] == "warriorcoder-verifier" for d in of_kind(objs, "Deployment")
    )
    assert deployed
    assert _arena_config(objs)["verifier"]["enabled"] is True


def test_without_the_verifier_the_responders_publish_to_the_judges(tools: Any) -> None:
    objs = objects(render.helm_template(tools, sets=["services.verifier.enabled=false"]))
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert not {n for n in names if n[1] == "warriorcoder-verifier"}, names
    assert _arena_config(objs)["verifier"]["enabled"] is False
    assert ("Deployment", "warriorcoder-responder") in names
    # The config cannot contradict the Deployment.
    proc = run_tool(
        tools.helm, "template", "w", render.CHART, "--set", "arena.verifier.enabled=false"
    )
    assert proc.returncode != 0
    assert "set services.verifier.enabled" in proc.stderr, proc.stderr


def test_the_verifier_can_scale_on_the_answered_stream(rendered: Rendered) -> None:
    so = named(rendered["production"], "ScaledObject", "warriorcoder-verifier")
    (trigger,) = so["spec"]["triggers"]
    assert (trigger["metadata"]["stream"], trigger["metadata"]["consumer"]) == (
        "WARRIORCODER_V1_ANSWERED",
        "verifier",
    )
    assert so["spec"]["minReplicaCount"] >= 1
