"""Strict arena config: every error names the key."""

import copy
import textwrap

import pytest

from warriorcoder.runtime.settings import ConfigError, Secret, load_settings, parse_settings

BASE = {
    "models": {
        name: {
            "triton_url": "triton:8001",
            "triton_model": name,
            "chat_template": {"preset": "chatml"},
        }
        for name in ("a", "b", "c")
    },
    "competitors": ["a", "b", "c"],
}


def tree(**changes):
    t = copy.deepcopy(BASE)
    t.update(changes)
    return t


def test_defaults_follow_the_paper():
    s = parse_settings(tree())
    assert (s.scoring.k, s.scoring.scale, s.scoring.base, s.scoring.alpha) == (40, 400, 10, 0.7)
    assert (1.2, 0.99) in s.sampling.challenge.grid()
    assert len(s.sampling.challenge.grid()) == 9
    assert (s.sampling.quality.temperature, s.sampling.quality.top_p) == (1.0, 0.95)
    assert s.challenger.quality.threshold == 5
    assert (s.challenger.near_dup.num_perm, s.challenger.near_dup.threshold) == (128, 0.5)
    assert (s.sampling.response.temperature, s.sampling.response.top_p) == (1.0, 0.95)
    assert s.sampling.response.max_tokens == 8192
    assert s.sampling.judge.top_p == 0.995
    assert s.judge.position_mode == "both"
    assert s.languages == ["Python"]


def test_unknown_key_is_named():
    t = tree()
    t["nats"] = {"urll": "nats://x"}
    with pytest.raises(ConfigError, match=r"unknown field `urll`.*\$\.nats"):
        parse_settings(t)


def test_bad_value_names_the_model():
    t = tree()
    t["models"]["b"]["timeout_s"] = -1
    with pytest.raises(ConfigError, match=r"\$\.models\.b\.timeout_s"):
        parse_settings(t)


def test_undefined_competitor_is_named():
    with pytest.raises(ConfigError, match=r"\$\.competitors\[2\].*'zeta'"):
        parse_settings(tree(competitors=["a", "b", "zeta"]))


def test_two_competitors_without_a_judge_are_rejected():
    with pytest.raises(ConfigError, match="uninvolved judge"):
        parse_settings(tree(competitors=["a", "b"]))
    # A judge-only model makes two competitors valid.
    s = parse_settings(tree(competitors=["a", "b"], judges=["c"]))
    assert s.judges_for("a", "b") == ["c"]


def test_judges_never_judge_their_own_battle():
    s = parse_settings(tree())
    assert s.judges_for("a", "b") == ["c"]
    assert s.judges_for("c", "a") == ["b"]


def test_water_marks_and_pair_weights_are_checked():
    with pytest.raises(ConfigError, match="low_water"):
        parse_settings(tree(challenger={"low_water": 10, "high_water": 5}))
    with pytest.raises(ConfigError, match=r"pair_weights\.a>a"):
        parse_settings(tree(challenger={"pair_weights": {"a>a": 2}}))


def test_template_needs_exactly_one_source():
    t = tree()
    t["models"]["a"]["chat_template"] = {"preset": "chatml", "file": "x.jinja"}
    with pytest.raises(ConfigError, match=r"\$\.models\.a\.chat_template"):
        parse_settings(t)


def test_env_overrides_and_secret(tmp_path):
    path = tmp_path / "arena.yaml"
    path.write_text(
        textwrap.dedent("""
        models:
          a: {triton_url: "t:1", triton_model: a, chat_template: {preset: chatml}}
          b: {triton_url: "t:1", triton_model: b, chat_template: {preset: llama3}}
          c: {triton_url: "t:1", triton_model: c, chat_template: {file: tpl/c.jinja}}
        competitors: [a, b, c]
        nats: {password: hunter2}
    """)
    )
    env = {
        "WARRIORCODER__SCORING__ALPHA": "0.5",
        "WARRIORCODER__MODELS__A__TIMEOUT_S": "12",
        "WARRIORCODER__NATS__URL": "nats://bus:4222",
        "OTHER": "ignored",
    }
    s = load_settings(path, env)
    assert s.scoring.alpha == 0.5
    assert s.models["a"].timeout_s == 12
    assert s.nats.url == "nats://bus:4222"
    assert s.models["c"].chat_template.file == str((tmp_path / "tpl" / "c.jinja").resolve())
    assert isinstance(s.nats.password, Secret)
    assert s.nats.password.reveal() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.nats.password)


def test_secrets_never_serialise():
    import json
    import logging

    import msgspec
    import orjson

    from warriorcoder.runtime.logs import _JsonFormatter

    secret = Secret("hunter2")
    # Encoders either refuse a secret or write the stars; none writes the value.
    assert b"hunter2" not in orjson.dumps({"pw": secret}, default=str)
    with pytest.raises(TypeError):
        orjson.dumps({"pw": secret})
    with pytest.raises(TypeError):
        json.dumps({"pw": secret})
    with pytest.raises(TypeError):
        msgspec.json.encode({"pw": secret})
    assert f"{secret}" == "**********" and "hunter2" not in f"{secret!r}"
    # The JSON log line of a record carrying a secret in its extras.
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "connecting", None, None)
    record.password = secret
    assert "hunter2" not in _JsonFormatter("test").format(record)


def test_env_override_with_bad_value_names_the_key(tmp_path):
    import yaml

    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(tree()))
    with pytest.raises(ConfigError, match=r"\$\.scoring\.alpha"):
        load_settings(path, {"WARRIORCODER__SCORING__ALPHA": "1.5"})
    path.write_text("competitors: [a, b, c]\n")
    with pytest.raises(ConfigError, match="models"):
        load_settings(path, {})


def test_unreadable_or_non_mapping_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)


def test_example_config_is_valid():
    from pathlib import Path

    from warriorcoder.runtime.templates import ChatTemplate

    path = Path(__file__).parents[2] / "examples" / "paper-five-experts.yaml"
    s = load_settings(path, {})
    assert s.competitors == ["athene", "deepseek", "llama", "qwen", "qwq"]
    assert len(s.judges_for("qwen", "llama")) == 3
    # athene and qwq share qwen's family: their votes count half (judge.family_policy: weight)
    weights = {j: s.vote_weight(j, "qwen", "llama") for j in s.judges_for("qwen", "llama")}
    assert weights == {"athene": 0.5, "deepseek": 1.0, "qwq": 0.5}
    for model in s.models.values():
        assert ChatTemplate.from_settings(model.chat_template).magpie_prefix("sys")


def test_cpu_example_serves_its_models_locally():
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "cpu-small-models.yaml"
    s = load_settings(path, {})
    assert all(m.is_local and m.triton_url is None for m in s.models.values())
    assert s.models["qwen"].local.path == "Qwen/Qwen2.5-0.5B-Instruct"


def test_local_backend_needs_its_section():
    t = tree()
    t["models"]["a"]["triton_url"] = "local"
    with pytest.raises(ConfigError, match=r"\$\.models\.a.*local"):
        parse_settings(t)


def test_only_a_local_model_may_leave_out_its_template():
    t = tree()
    del t["models"]["a"]["chat_template"]
    with pytest.raises(ConfigError, match=r"\$\.models\.a\.chat_template.*local"):
        parse_settings(t)
    del t["models"]["a"]["triton_url"]
    t["models"]["a"]["local"] = {"path": "/models/a"}
    assert parse_settings(t).models["a"].chat_template.file is None


def test_a_model_names_exactly_one_backend():
    t = tree()
    t["models"]["b"]["local"] = {"path": "/models/b"}
    with pytest.raises(ConfigError, match=r"\$\.models\.b`: give `triton_url`.*not both"):
        parse_settings(t)
    t = tree()
    del t["models"]["c"]["triton_url"]
    with pytest.raises(ConfigError, match=r"\$\.models\.c`: give `triton_url: host:port`"):
        parse_settings(t)


def test_the_old_local_sentinel_says_what_to_write_instead():
    t = tree()
    t["models"]["a"].update(triton_url="local", local={"path": "/models/a"})
    with pytest.raises(ConfigError, match=r"\$\.models\.a\.triton_url`.*leave `triton_url` out"):
        parse_settings(t)


def test_a_local_model_has_no_endpoint_until_up_serves_it():
    t = tree()
    del t["models"]["a"]["triton_url"]
    t["models"]["a"]["local"] = {"path": "/models/a", "dtype": "bfloat16"}
    s = parse_settings(t)
    assert s.models["a"].is_local and not s.models["b"].is_local
    assert s.models["a"].local is not None and s.models["a"].local.dtype == "bfloat16"
    assert s.models["b"].endpoint == "triton:8001"
    with pytest.raises(ConfigError, match="warriorcoder up"):
        _ = s.models["a"].endpoint
