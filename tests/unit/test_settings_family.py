"""Model families and the judges' family policy: who judges a battle (``judges_for``), with
what weight (``vote_weight``), and the config errors when a battle would be left without a
judge whose vote counts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import arena_tree
from warriorcoder.runtime.settings import ArenaSettings, ConfigError, parse_settings


def family_tree(families: dict[str, str], **changes: Any) -> dict[str, Any]:
    """alpha, beta, gamma compete; garbler and slow judge only; ``families`` set per model."""
    tree = arena_tree(judges=["garbler", "slow"], **changes)
    for name, family in families.items():
        tree["models"][name]["family"] = family
    return tree


def settings(families: dict[str, str], **changes: Any) -> ArenaSettings:
    return parse_settings(family_tree(families, **changes))


QWEN = {"alpha": "qwen", "garbler": "qwen", "beta": "llama"}


def test_without_families_every_uninvolved_judge_judges_with_weight_one():
    s = settings({})
    assert s.judges_for("alpha", "beta") == ["gamma", "garbler", "slow"]
    assert all(s.vote_weight(j, "alpha", "beta") == 1.0 for j in s.judges_for("alpha", "beta"))
    assert s.family_of("alpha") is None and s.family_of("mallory") is None


def test_exclude_is_the_default_and_drops_a_judge_of_either_fighters_family():
    s = settings(QWEN)
    assert s.judge.family_policy == "exclude"
    assert s.family_of("garbler") == "qwen"
    assert s.shares_family("garbler", "alpha", "gamma")
    assert s.shares_family("garbler", "gamma", "alpha")  # either corner
    assert not s.shares_family("slow", "alpha", "gamma")  # no family: never shares
    assert s.judges_for("alpha", "beta") == ["gamma", "slow"]
    assert s.judges_for("gamma", "alpha") == ["beta", "slow"]
    assert s.judges_for("beta", "gamma") == ["alpha", "garbler", "slow"]  # no qwen fighter
    assert s.vote_weight("slow", "alpha", "beta") == 1.0


def test_weight_keeps_the_judge_with_the_same_family_weight():
    s = settings(QWEN, judge={"family_policy": "weight", "same_family_weight": 0.25})
    assert s.judges_for("alpha", "beta") == ["gamma", "garbler", "slow"]
    assert s.vote_weight("garbler", "alpha", "beta") == 0.25
    assert s.vote_weight("garbler", "beta", "alpha") == 0.25
    assert s.vote_weight("gamma", "alpha", "beta") == 1.0
    assert s.vote_weight("garbler", "beta", "gamma") == 1.0  # no qwen fighter


def test_off_treats_a_same_family_judge_like_any_other():
    s = settings(QWEN, judge={"family_policy": "off"})
    assert s.judges_for("alpha", "beta") == ["gamma", "garbler", "slow"]
    assert s.vote_weight("garbler", "alpha", "beta") == 1.0


def test_exclude_without_a_judge_for_some_battle_is_a_config_error_naming_the_keys():
    # Every judge of alpha vs beta is a qwen or a llama: nobody is left to judge it.
    families = {"alpha": "qwen", "beta": "llama", "gamma": "qwen", "garbler": "llama"}
    with pytest.raises(ConfigError) as info:
        settings({**families, "slow": "qwen"})
    msg = str(info.value)
    assert "`$.judge.family_policy`" in msg and "alpha vs beta" in msg
    assert "`$.models.alpha.family` 'qwen'" in msg and "`$.models.beta.family` 'llama'" in msg
    # the same arena is valid with a judge of another family, or with weight / off
    settings({**families, "slow": "deepseek"})
    settings({**families, "slow": "qwen"}, judge={"family_policy": "weight"})
    settings({**families, "slow": "qwen"}, judge={"family_policy": "off"})


def test_a_zero_weight_that_leaves_a_battle_without_a_counted_vote_is_a_config_error():
    families = {"alpha": "qwen", "beta": "llama", "gamma": "qwen", "garbler": "llama"}
    judge = {"family_policy": "weight", "same_family_weight": 0.0}
    with pytest.raises(ConfigError, match=r"`\$\.judge\.same_family_weight`: 0 .*alpha vs beta"):
        settings({**families, "slow": "qwen"}, judge=judge)
    settings({**families, "slow": "deepseek"}, judge=judge)  # slow's vote counts


def test_a_pair_that_never_fights_needs_no_judge():
    families = {"alpha": "qwen", "beta": "llama", "gamma": "qwen", "garbler": "llama"}
    # alpha vs beta and beta vs gamma have no judge outside {qwen, llama}
    weights = {"alpha>beta": 0, "beta>alpha": 0, "beta>gamma": 0, "gamma>beta": 0}
    s = settings({**families, "slow": "qwen"}, challenger={"pair_weights": weights})
    assert s.judges_for("alpha", "beta") == []
    assert s.judges_for("alpha", "gamma") == ["beta", "garbler"]  # llama judges qwens
    del weights["gamma>beta"]
    with pytest.raises(ConfigError, match="gamma vs beta"):
        settings({**families, "slow": "qwen"}, challenger={"pair_weights": weights})


def test_a_family_must_be_a_lower_case_name():
    tree = family_tree({"alpha": "Qwen 2"})
    with pytest.raises(ConfigError, match=r"\$\.models\.alpha\.family"):
        parse_settings(tree)


def test_the_weight_must_be_within_zero_and_one():
    with pytest.raises(ConfigError, match="same_family_weight"):
        settings({}, judge={"same_family_weight": 1.5})
