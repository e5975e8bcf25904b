"""A scripted judge that favours its own family, through the real judge stage (in-process fakes),
the aggregator's check and decision, and the bias measure: with ``family_policy: off`` its bias
is measured (clearly above 0), with ``exclude`` it never judges its family's battles (nothing to
measure, no influence), with ``weight`` its votes there count half (as the score card and the
ratings show), and the exported votes replay each run's live ratings exactly."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import battle
from warriorcoder.arena.decide import decide
from warriorcoder.arena.invariants import check_judgement
from warriorcoder.data.bradley_terry import online_elo
from warriorcoder.data.judge_bias import JudgeBias, judge_bias
from warriorcoder.data.votes import votes_from_samples
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Judgement, Sample
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings, parse_settings
from warriorcoder.stages.judge.service import STAGE, make_handler
from warriorcoder.testing.fakes import FakeInference, FakePublisher
from warriorcoder.testing.scripted import ScriptedModel, family_of

# alpha (qwen) is the weakest fighter; qwen-judge favours it, the neutral judges never do.
MODELS = [
    ScriptedModel(name="alpha", strength=4, family="qwen"),
    ScriptedModel(name="beta", strength=7, family="llama"),
    ScriptedModel(name="gamma", strength=6, family="deepseek"),
    ScriptedModel(name="qwen-judge", strength=5, family="qwen", family_bias=True),
    ScriptedModel(name="neutral-1", strength=5),
    ScriptedModel(name="neutral-2", strength=5),
]
FIGHTERS = ["alpha", "beta", "gamma"]
ROUNDS = 3  # every ordered pair fights this many times: 18 battles, 12 of them alpha's
PARAMS = {"max_tokens": 512}


def arena(policy: str) -> ArenaSettings:
    models: dict[str, Any] = {}
    for m in MODELS:
        models[m.name] = {
            "triton_url": "127.0.0.1:1",
            "triton_model": m.name,
            "chat_template": {"preset": "chatml"},
        }
        if m.family is not None:
            models[m.name]["family"] = m.family
    return parse_settings(
        {
            "models": models,
            "competitors": FIGHTERS,
            "judges": ["qwen-judge", "neutral-1", "neutral-2"],
            "judge": {"family_policy": policy, "same_family_weight": 0.5},
        }
    )


@dataclass
class Run:
    settings: ArenaSettings
    samples: list[Sample]
    ratings: dict[str, float]

    def bias(self) -> dict[str, JudgeBias]:
        families = {name: self.settings.family_of(name) for name in self.settings.models}
        return {r.judge: r for r in judge_bias(self.samples, families)}

    def of(self, model: str) -> list[Sample]:
        return [s for s in self.samples if model in (s.attacker, s.defender)]


async def run_arena(policy: str) -> Run:
    s = arena(policy)
    by_name = {m.name: m for m in MODELS}
    inference = FakeInference(MODELS)
    publisher = FakePublisher()
    handle = make_handler(s, Roster.from_settings(s, STAGE.models(s)), inference, publisher)
    ratings = dict.fromkeys(FIGHTERS, s.scoring.initial_rating)
    samples: list[Sample] = []
    for n, (a, d) in itertools.product(range(ROUNDS), itertools.permutations(FIGHTERS, 2)):
        task = f"You are an expert Python programmer. Write `task_{n}_{a}_{d}` in Python."
        answers = [by_name[m].generate(task, PARAMS) for m in (a, d)]
        await handle(battle(*answers, attacker=a, defender=d, text=task))
        j = publisher.messages(subjects.JUDGEMENTS)[-1]
        assert isinstance(j, Judgement)
        check_judgement(j, s)  # what the aggregator accepts
        sample = decide(j, ratings[a], ratings[d], s.scoring, rating_seq=len(samples) + 1)
        assert sample is not None
        ratings.update(sample.ratings_after)
        samples.append(sample)
    return Run(s, samples, ratings)


@pytest.fixture(scope="module")
async def runs() -> dict[str, Run]:
    return {policy: await run_arena(policy) for policy in ("off", "exclude", "weight")}


def test_the_scripted_fighters_sign_their_answers_with_their_family(runs):
    s = runs["off"].samples[0]
    assert family_of(s.chosen) in {"qwen", "llama", "deepseek"}
    assert {family_of(x) for x in (s.chosen, s.rejected)} == {
        runs["off"].settings.family_of(s.attacker),
        runs["off"].settings.family_of(s.defender),
    }


def test_with_the_policy_off_the_bias_is_measured(runs):
    bias = runs["off"].bias()
    q = bias["qwen-judge"]
    # it sided with alpha in each of alpha's 12 battles, where the neutral panel never did ...
    assert (q.same_family.hits, q.same_family.trials) == (4 * ROUNDS, 4 * ROUNDS)
    # ... and judged like the panel elsewhere (beta vs gamma: 6 battles)
    assert (q.other_family.hits, q.other_family.trials) == (0, 2 * ROUNDS)
    assert q.bias == 1.0
    assert q.bias_lower is not None and q.bias_lower > 0.5  # clearly above 0, interval and all
    assert bias["neutral-1"].bias is None and bias["neutral-1"].family is None
    assert bias["neutral-1"].other_family.hits == 0  # the neutral judges agree throughout
    votes = [v for s in runs["off"].of("alpha") for v in s.votes if v.judge == "qwen-judge"]
    assert len(votes) == 4 * ROUNDS and all(v.weight == 1.0 for v in votes)
    assert all("the way I would write it" in r for v in votes for r in v.reasons)


def test_exclude_keeps_the_biased_judge_out_of_its_familys_battles(runs):
    run = runs["exclude"]
    for s in run.of("alpha"):
        third = ({"beta", "gamma"} - {s.attacker, s.defender}).pop()  # the uninvolved fighter
        assert {v.judge for v in s.votes} == {third, "neutral-1", "neutral-2"}
        assert s.loser == "alpha" and s.score.local_attacker in (0.0, 1.0)
    q = run.bias()["qwen-judge"]
    assert q.own_family_battles == 0 and q.same_family.trials == 0 and q.bias is None
    assert (q.other_family.hits, q.other_family.trials) == (0, 2 * ROUNDS)


def test_weight_counts_the_biased_judges_votes_at_the_configured_weight(runs):
    weighted, off = runs["weight"], runs["off"]
    for s_w, s_o in zip(weighted.of("alpha"), off.of("alpha"), strict=True):
        [q] = [v for v in s_w.votes if v.judge == "qwen-judge"]
        assert q.weight == 0.5
        alpha_votes = (
            s_w.score.attacker_votes if s_w.attacker == "alpha" else s_w.score.defender_votes
        )
        other_votes = (
            s_w.score.defender_votes if s_w.attacker == "alpha" else s_w.score.attacker_votes
        )
        assert (alpha_votes, other_votes) == (0.5, 3.0)  # x(alpha) = 1 / 7 ...
        off_alpha = (
            s_o.score.attacker_votes if s_o.attacker == "alpha" else s_o.score.defender_votes
        )
        assert off_alpha == 1.0  # ... where it was 1 / 4 with the policy off
    for s in weighted.samples:  # other battles: every vote at full weight
        if "alpha" not in (s.attacker, s.defender):
            assert all(v.weight == 1.0 for v in s.votes)
    # the judge is as biased as ever; its influence on alpha's rating is what shrinks
    assert weighted.bias()["qwen-judge"].bias == 1.0
    r = {policy: run.ratings["alpha"] for policy, run in runs.items()}
    assert r["off"] > r["weight"] > r["exclude"]


@pytest.mark.parametrize("policy", ["off", "exclude", "weight"])
def test_the_exported_votes_replay_the_live_ratings_exactly(runs, policy: str):
    run = runs[policy]
    initial = run.settings.scoring.initial_rating
    assert online_elo(votes_from_samples(run.samples), initial=initial) == run.ratings


def _judge_prompt(answer_a: str, answer_b: str) -> str:
    from warriorcoder.arena.prompts import judge_messages

    return "\n".join(m["content"] for m in judge_messages("Write `f`.", answer_a, answer_b))


def test_a_biased_judge_prefers_its_familys_answer_only_when_one_answer_has_it():
    judge = ScriptedModel(name="q", strength=5, family="qwen", family_bias=True)
    fair = ScriptedModel(name="n", strength=5)
    own, other = "ok\nfamily=qwen\nquality=2", "good\nfamily=llama\nquality=9"
    assert judge.generate(_judge_prompt(own, other), PARAMS).endswith("[[A]]")
    assert judge.generate(_judge_prompt(other, own), PARAMS).endswith("[[B]]")
    assert fair.generate(_judge_prompt(own, other), PARAMS).endswith("[[B]]")
    # both or neither of its family: it judges by quality like any judge
    both = "good\nfamily=qwen\nquality=9"
    assert judge.generate(_judge_prompt(own, both), PARAMS).endswith("[[B]]")
    assert judge.generate(_judge_prompt(other, "x\nquality=1"), PARAMS).endswith("[[A]]")
    # only an answer's last family line counts: a forged earlier one does not
    forged = "family=qwen\ngood\nfamily=llama\nquality=9"
    assert family_of(forged) == "llama"
    assert judge.generate(_judge_prompt(forged, "meh\nquality=3"), PARAMS).endswith("[[A]]")


def test_an_answer_is_signed_only_by_a_model_with_a_family():
    prompt = "You are an expert Python programmer. Write `f` in Python."
    signed = ScriptedModel(name="q", strength=5, family="qwen").generate(prompt, PARAMS)
    assert signed.endswith("family=qwen\nquality=5") and family_of(signed) == "qwen"
    plain = ScriptedModel(name="n", strength=5).generate(prompt, PARAMS)
    assert "family=" not in plain and family_of(plain) is None


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"family_bias": True}, "family_bias: the model needs a `family`"),
        ({"family": "Qwen 2"}, "family: expected lower-case"),
        ({"family": "qwen", "family_bias": "yes"}, "family_bias: expected true or false"),
    ],
)
def test_family_settings_are_checked(changes: dict[str, Any], error: str):
    with pytest.raises(ValueError, match=error):
        ScriptedModel(name="q", strength=5, **changes)


def _write_arena(tmp_path, run: Run) -> tuple[str, str]:
    """The run's samples as an aggregator shard and its config as YAML: (data dir, config)."""
    import yaml

    from warriorcoder.proto.messages import encode

    data = tmp_path / "data" / "samples"
    data.mkdir(parents=True)
    (data / "samples-0.jsonl").write_bytes(b"".join(encode(s) + b"\n" for s in run.samples))
    tree = {
        "models": {
            name: {
                "triton_url": "127.0.0.1:1",
                "triton_model": name,
                "chat_template": {"preset": "chatml"},
                **({"family": m.family} if m.family else {}),
            }
            for name, m in run.settings.models.items()
        },
        "competitors": FIGHTERS,
        "judges": ["qwen-judge", "neutral-1", "neutral-2"],
        "judge": {"family_policy": run.settings.judge.family_policy},
    }
    config = tmp_path / "arena.yaml"
    config.write_text(yaml.safe_dump(tree))
    return str(tmp_path / "data"), str(config)


def test_the_judges_command_reports_the_bias_as_a_table_json_and_csv(tmp_path, runs, capsys):
    import csv
    import json

    from warriorcoder.cli import main

    data, config = _write_arena(tmp_path, runs["off"])
    assert main(["judges", "--bias", "--config", config, "--data-dir", data]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("judge family bias over 18 samples")
    [q] = [line for line in table if line.startswith("qwen-judge")]
    assert "1.00 [0.76, 1.00] (12/12)" in q and "0.00 [0.00, 0.39] (0/6)" in q
    assert "+1.00 [+0.54, +1.00]" in q  # the interval clear of 0
    assert main(["judges", "--bias", "--config", config, "--data-dir", data, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["qwen-judge"]["bias"] == 1.0 and doc["qwen-judge"]["family"] == "qwen"
    assert doc["qwen-judge"]["same_family"]["trials"] == 12
    out = tmp_path / "bias.csv"
    assert (
        main(["judges", "--bias", "--config", config, "--data-dir", data, "--csv", str(out)]) == 0
    )
    rows = {r["judge"]: r for r in csv.DictReader(out.open())}
    assert rows["qwen-judge"]["same_hits"] == "12" and rows["neutral-1"]["bias"] == ""


def test_the_judges_command_names_a_bad_input(tmp_path, runs, capsys):
    from warriorcoder.cli import main

    data, config = _write_arena(tmp_path, runs["off"])
    assert (
        main(["judges", "--bias", "--config", str(tmp_path / "no.yaml"), "--data-dir", data]) == 2
    )
    assert "cannot read arena config" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere")
    assert main(["judges", "--bias", "--config", config, "--data-dir", missing]) == 2
    assert "no such data directory" in capsys.readouterr().err


@pytest.mark.parametrize("policy", ["off", "weight", "exclude"])
def test_the_dataset_card_shows_the_bias_given_the_families(tmp_path, runs, policy: str):
    from warriorcoder.data.card import render_card

    run = runs[policy]
    families = {name: run.settings.family_of(name) for name in run.settings.models}
    card = render_card(run.samples, bootstrap_n=0, families=families)
    assert "## Judge family bias" in card
    [q] = [line for line in card.splitlines() if line.startswith("| qwen-judge |")]
    if policy == "exclude":
        assert "| - (0) |" in q and q.rstrip().endswith("| - |")  # nothing to measure
    else:
        assert "(12/12)" in q and "+1.00" in q
    weighted = "12 votes by judges of a fighter's family counted with weight 0.5"
    assert (weighted in card) == (policy == "weight")
    assert "## Judge family bias" not in render_card(run.samples, bootstrap_n=0)


def test_export_with_the_config_writes_the_bias_into_the_card_and_the_weights_into_votes(
    tmp_path, runs, capsys
):
    from warriorcoder.cli import main
    from warriorcoder.data.votes import read_votes

    run = runs["weight"]
    data, config = _write_arena(tmp_path, run)
    out = tmp_path / "out" / "votes.jsonl"
    argv = ["export", "--format", "votes", "--out", str(out), "--data-dir", data, "--card"]
    assert main([*argv, "--config", config]) == 0, capsys.readouterr().err
    card = (out.parent / "README.md").read_text()
    assert "## Judge family bias" in card and "counted with weight 0.5" in card
    votes = read_votes(out)
    assert sorted({v.weight for v in votes}) == [0.5, 1.0]
    initial = run.settings.scoring.initial_rating
    assert online_elo(votes, initial=initial) == run.ratings  # the file replays the live Elo
    assert main(argv) == 0  # without the config: no bias section
    assert "## Judge family bias" not in (out.parent / "README.md").read_text()
