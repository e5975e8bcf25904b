"""What is generated from the chart is current: deploy/k8s/ and deploy/nats/values.yaml.

Both come from `python deploy/render.py`; these tests fail (naming the files) when a chart or
permissions change was not followed by a re-run.
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.helpers import Rendered, objects, render, run_tool
from warriorcoder.proto import subjects, topology


def _identity(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _without_helm_labels(obj: Any) -> Any:
    """Drop what render.py strips from chart objects for the plain manifests."""
    if isinstance(obj, dict):
        return {
            k: _without_helm_labels(v)
            for k, v in obj.items()
            if k not in ("helm.sh/chart", "app.kubernetes.io/managed-by")
        }
    if isinstance(obj, list):
        return [_without_helm_labels(v) for v in obj]
    return obj


def test_generated_files_are_current(tools: Any) -> None:
    assert render.stale(tools) == [], "stale: re-run `python deploy/render.py`"


def test_kustomize_base_builds_the_chart_defaults(tools: Any, rendered: Rendered) -> None:
    proc = run_tool(tools.kubectl, "kustomize", render.K8S_DIR)
    assert proc.returncode == 0, proc.stderr
    built = {_identity(o): o for o in objects(proc.stdout)}
    chart = {_identity(o): o for o in rendered["default"]}
    assert sorted(built) == sorted(chart)
    for key, obj in built.items():
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize", key
        assert _without_helm_labels(obj) == _without_helm_labels(chart[key]), key


def test_nats_values_grant_each_chart_user_its_permissions() -> None:
    values = yaml.safe_load(render.NATS_VALUES.read_text())
    config = values["config"]
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["enabled"] is True
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    account, users = render.load_permissions()
    merged = config["merge"]
    nats_users = {u["user"]: u for u in merged["accounts"][account]["users"]}
    assert merged["accounts"][account]["jetstream"] == "enabled"
    chart_users = yaml.safe_load((render.CHART / "values.yaml").read_text())["nats"]["auth"]
    secret = chart_users["existingSecret"]
    env = values["container"]["env"]
    for service, perms in users.items():
        # The chart's default user of the service is the NATS user with its permissions.
        assert chart_users["users"][service]["user"] == perms.user
        user = nats_users[perms.user]
        assert user["permissions"]["publish"]["allow"] == list(perms.publish)
        assert user["permissions"]["subscribe"]["allow"] == list(perms.subscribe)
        var = render.password_env(service)
        assert user["password"] == f"<< ${var} >>"
        assert env[var]["valueFrom"]["secretKeyRef"] == {
            "name": secret,
            "key": f"{service}-password",
        }


def test_permissions_name_the_code_s_streams_consumers_and_buckets() -> None:
    """Every subject family in the permissions file refers to a stream, consumer or bucket of
    proto/topology.py, each declared KV bucket is granted to a service, each declared durable
    consumer to its stage, and each stage may only touch its own consumer."""
    _, users = render.load_permissions()
    streams = {s.name for s in topology.STREAMS}
    buckets = {b.name for b in topology.BUCKETS}
    embeddings = topology.stream(subjects.STREAM_EMBEDDINGS)
    assert embeddings.optional  # created by the challenger's diversity gate alone
    granted_buckets = set()
    granted_consumers = set()
    for perms in users.values():
        for subject in perms.publish:
            parts = subject.split(".")
            if subject == "$JS.API.STREAM.NAMES":
                continue  # read-only: find the stream of a subject (ordered consumers)
            if subject.startswith("$JS.FC."):  # flow control of an ordered consumer
                assert parts[2] == embeddings.name, subject
                assert perms.service == "challenger", subject
                continue
            if subject.startswith("$JS.API.CONSUMER.") and parts[4] == embeddings.name:
                # the diversity gate's ephemeral ordered consumer: only the challenger's
                assert perms.service == "challenger", subject
                continue
            if subject.startswith(("$JS.API.STREAM.", "$JS.API.DIRECT.GET.")):
                name = parts[5] if subject.startswith("$JS.API.STREAM.MSG.GET.") else parts[4]
                if name.startswith("KV_"):
                    assert name[3:] in buckets, subject
                    granted_buckets.add(name[3:])
                else:
                    assert name in streams, subject
            elif subject.startswith("$KV."):
                assert parts[1] in buckets, subject
            elif subject.startswith(("$JS.API.CONSUMER.", "$JS.ACK.")):
                acked = subject.startswith("$JS.ACK.")
                stream, durable = (parts[2], parts[3]) if acked else (parts[-2], parts[-1])
                assert stream in streams, subject
                if subject.startswith("$JS.API.CONSUMER.INFO.") and durable != perms.service:
                    # read-only: the backlog of the stage downstream (the challenger's water
                    # marks read the responders' undelivered challenges)
                    assert topology.Consumer(durable, stream) in topology.CONSUMERS, subject
                    assert (perms.service, durable) == ("challenger", "responder"), subject
                    continue
                assert durable == perms.service, f"{perms.service} may touch {subject}"
                granted_consumers.add(topology.Consumer(durable, stream))
            else:
                assert subject.startswith(subjects.PREFIX + "."), subject
        assert all(s == "_INBOX.>" for s in perms.subscribe), perms
        assert not any(s == ">" or s.endswith(".*") for s in perms.publish), perms
    assert granted_buckets == buckets
    assert granted_consumers == set(topology.CONSUMERS)
