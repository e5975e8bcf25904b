"""The roster renders prompts for a vLLM backend: one BOS reaches the model, never two.

Usage::

    python -m pytest tests/unit/test_roster.py -q
"""

from __future__ import annotations

import pytest

from tests.helpers import arena_tree
from warriorcoder.runtime.roster import Roster, backend_template
from warriorcoder.runtime.settings import parse_settings
from warriorcoder.runtime.templates import ChatTemplate

LLAMA_BOS = "<|begin_of_text|>"
DS_BOS = "<｜begin▁of▁sentence｜>"
MESSAGES = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]


def roster(**model_changes: dict) -> Roster:
    tree = arena_tree()
    for name, changes in model_changes.items():
        tree["models"][name] = {**tree["models"][name], **changes}
    settings = parse_settings(tree)
    return Roster.from_settings(settings, ["alpha", "beta", "gamma"])


@pytest.mark.parametrize(("name", "bos"), [("beta", LLAMA_BOS), ("gamma", DS_BOS)])
def test_every_rendering_leaves_out_the_bos_the_tokenizer_adds(name: str, bos: str) -> None:
    model = roster()[name]
    plain = ChatTemplate.preset({"beta": "llama3", "gamma": "deepseek-coder"}[name])
    assert plain.render(MESSAGES, add_generation_prompt=True).startswith(bos)  # the template's
    rendered = [
        model.template.render(MESSAGES, add_generation_prompt=True),
        model.template.conversation("Be terse.", "Hi"),
        model.template.magpie_prefix("Be terse."),
    ]
    for text in rendered:
        assert bos not in text, text  # the vLLM tokenizer adds the one BOS
    assert rendered[0] == plain.render(MESSAGES, add_generation_prompt=True).removeprefix(bos)
    assert model.template.user_turn_end() == plain.user_turn_end()
    assert model.template.stop_tokens() == plain.stop_tokens()
    assert model.template.bos_token == bos  # still known to whoever needs it


def test_a_tokenizer_that_adds_no_bos_keeps_the_templates() -> None:
    model = roster(beta={"tokenizer_adds_bos": False})["beta"]
    assert model.template.render(MESSAGES, add_generation_prompt=True).startswith(LLAMA_BOS)


def test_a_template_without_bos_is_unchanged() -> None:
    chatml = roster()["alpha"].template
    assert chatml.conversation("s", "u") == ChatTemplate.preset("chatml").conversation("s", "u")
    tpl = ChatTemplate.preset("qwen2.5")
    assert backend_template(tpl, tokenizer_adds_bos=True) is tpl


def test_the_original_template_is_not_changed() -> None:
    tpl = ChatTemplate.preset("llama3")
    stripped = backend_template(tpl, tokenizer_adds_bos=True)
    assert stripped is not tpl
    assert tpl.conversation("s", "u").startswith(LLAMA_BOS)
    assert not stripped.conversation("s", "u").startswith(LLAMA_BOS)
