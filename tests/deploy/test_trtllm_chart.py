"""The chart's Triton for balanced gRPC and the TensorRT-LLM contract: a headless Service per
model that the services resolve (``dns:///``), and a model served from a prepared TensorRT-LLM
model repository (upstream's ensemble or BLS) with ``contract: trtllm`` in the arena config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.helpers import CHART, named, objects, of_kind, pod_spec, render
from warriorcoder.runtime.settings import load_settings

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="deploy checks run in `tox -e deploy` (needs kubernetes-validate)"
)

TRT = [
    "triton.models.qwen.contract=trtllm",
    "triton.models.qwen.repository=/weights/trtllm/qwen",
    "triton.models.qwen.tritonModel=ensemble",
]


def _render(tools: Any, *sets: str) -> list[dict[str, Any]]:
    text = render.helm_template(tools, [CHART / "values-production.yaml"], sets=list(sets))
    return objects(text)


def _arena(objs: list[dict[str, Any]], tmp_path: Path) -> Any:
    path = tmp_path / "arena.yaml"
    path.write_text(named(objs, "ConfigMap", "warriorcoder-config")["data"]["arena.yaml"])
    env = {"WARRIORCODER__NATS__USER": "judge", "WARRIORCODER__NATS__PASSWORD": "x"}
    return load_settings(path, env)


def test_every_model_is_reached_through_a_headless_service_of_its_pods(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    objs = rendered["production"]
    settings = _arena(objs, tmp_path)
    for name, model in settings.models.items():
        assert model.triton_url is not None and model.triton_url.startswith("dns:///"), name
        host, port = model.triton_url.removeprefix("dns:///").split(":")
        svc = named(objs, "Service", host)
        assert svc["spec"]["clusterIP"] == "None"  # one A record per ready pod
        assert svc["spec"]["publishNotReadyAddresses"] is False
        assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
        dep = named(objs, "Deployment", host.removesuffix("-headless"))
        labels = pod_spec(dep) and dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert model.contract == "vllm"


def test_a_trtllm_model_serves_the_prepared_repository_with_the_trtllm_image(
    tools: Any, tmp_path: Path
) -> None:
    objs = _render(tools, *TRT)
    dep = next(
        d
        for d in of_kind(objs, "Deployment")
        if d["metadata"]["labels"].get("warriorcoder.io/model") == "qwen"
    )
    spec = pod_spec(dep)
    (c,) = spec["containers"]
    assert c["image"].endswith("-trtllm-python-py3")
    assert "--model-repository=/weights/trtllm/qwen" in c["args"]
    loaded = [a.removeprefix("--load-model=") for a in c["args"] if a.startswith("--load-model=")]
    assert loaded == ["preprocessing", "tensorrt_llm", "postprocessing", "ensemble"]
    assert "repository" not in {v["name"] for v in spec["volumes"]}
    assert "repository" not in {m["name"] for m in c["volumeMounts"]}
    assert not any(
        cm["metadata"]["name"] == dep["metadata"]["name"] for cm in of_kind(objs, "ConfigMap")
    )  # no vLLM model.json for it
    settings = _arena(objs, tmp_path)
    assert settings.models["qwen"].contract == "trtllm"
    assert settings.models["qwen"].triton_model == "ensemble"
    assert settings.models["llama"].contract == "vllm"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (TRT[:1], "triton.models.qwen.repository"),
        ([*TRT[:1], "triton.models.qwen.repository=/models/x"], "under /weights/"),
        (["triton.models.qwen.contract=tgi"], "contract"),
    ],
)
def test_bad_trtllm_values_fail_with_the_key_named(
    tools: Any, sets: list[str], message: str
) -> None:
    with pytest.raises(Exception) as err:
        _render(tools, *sets)
    assert message in str(err.value)
    assert "qwen" in str(err.value)


def test_the_trtllm_deployment_and_headless_services_match_their_kubernetes_schemas(
    tools: Any,
) -> None:
    objs = _render(tools, *TRT)
    checked = [
        o
        for o in objs
        if o["metadata"]["name"].endswith("-headless")
        or o["metadata"].get("labels", {}).get("warriorcoder.io/model") == "qwen"
    ]
    assert len([o for o in checked if o["metadata"]["name"].endswith("-headless")]) == 5
    for obj in checked:
        kubernetes_validate.validate(obj, render.KUBE_VERSION, strict=True)
