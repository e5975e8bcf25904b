"""The arena's settings per mode are typed structs, and the file the services read is theirs."""

from pathlib import Path

import msgspec
import pytest
import yaml

from warriorcoder.launcher.config import (
    demo_arena_settings,
    for_run,
    local_models_file,
    scripted_arena_settings,
    serve_locally,
    write_settings,
)
from warriorcoder.runtime.settings import ConfigError, LocalModelSettings, Secret, load_settings


def test_scripted_settings_round_trip_through_the_services_config_file(tmp_path: Path):
    s = scripted_arena_settings(["alpha", "beta", "gamma"], triton_grpc="127.0.0.1:9001")
    s = for_run(s, nats_url="nats://127.0.0.1:4333", samples_dir=tmp_path / "samples")
    s = msgspec.structs.replace(s, nats=msgspec.structs.replace(s.nats, password=Secret("pw")))
    path = tmp_path / "arena.yaml"
    write_settings(path, s)
    assert yaml.safe_load(path.read_text())["nats"]["password"] == "pw"  # services need it
    loaded = load_settings(path, {})
    assert loaded == s
    assert {m.chat_template.preset for m in loaded.models.values()} == {
        "chatml",
        "llama3",
        "deepseek-coder",
    }
    assert loaded.data_dir == str(tmp_path / "samples")
    assert loaded.models["beta"].endpoint == "127.0.0.1:9001"


def test_demo_models_are_local_until_served(tmp_path: Path):
    dirs = {}
    for name in ("demo-a", "demo-b", "demo-c"):
        (tmp_path / name).mkdir()
        dirs[name] = tmp_path / name
    s = demo_arena_settings(dirs)
    assert all(m.is_local for m in s.models.values())
    spec = local_models_file(s)
    assert [e["name"] for e in spec["models"]] == list(dirs)
    assert spec["models"][0] == {
        "name": "demo-a",
        "path": str(tmp_path / "demo-a"),
        "device": "cpu",
        "dtype": "auto",
        "max_batch_size": 8,
    }
    with pytest.raises(ConfigError):
        _ = s.models["demo-a"].endpoint

    served = serve_locally(s, "127.0.0.1:8111")
    for name, m in served.models.items():
        assert not m.is_local and m.endpoint == "127.0.0.1:8111"
        # No template given: the model's own, from the tokenizer config beside its weights.
        assert m.chat_template.file == str(tmp_path / name / "tokenizer_config.json")
    assert local_models_file(served) == {"models": []}


def test_serving_locally_keeps_remote_models_and_given_templates(tmp_path: Path):
    s = scripted_arena_settings(["alpha", "beta", "gamma"], triton_grpc="remote:8001")
    local = msgspec.structs.replace(
        s.models["gamma"],
        triton_url=None,
        local=LocalModelSettings(path=str(tmp_path)),
    )
    s = msgspec.structs.replace(s, models={**s.models, "gamma": local})
    served = serve_locally(s, "127.0.0.1:8111")
    assert served.models["alpha"] == s.models["alpha"]
    assert served.models["gamma"].endpoint == "127.0.0.1:8111"
    assert served.models["gamma"].chat_template == s.models["gamma"].chat_template


def test_write_settings_refuses_an_invalid_arena(tmp_path: Path):
    s = scripted_arena_settings(["alpha", "beta"], triton_grpc="t:1")
    with pytest.raises(ConfigError, match="uninvolved judge"):
        write_settings(tmp_path / "arena.yaml", s)
    assert not (tmp_path / "arena.yaml").exists()


def test_free_ports_are_never_handed_out_twice_in_a_row():
    """Triton's HTTP and gRPC ports are picked one after the other: the kernel may offer a port
    it just freed again, and Triton then refuses to start on one port for both."""
    from warriorcoder.launcher.processes import free_port

    picked = [free_port() for _ in range(300)]
    assert len(set(picked)) == len(picked)
