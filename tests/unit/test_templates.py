import json
from pathlib import Path
from typing import cast

import pytest

from warriorcoder.runtime.settings import ChatTemplateSettings
from warriorcoder.runtime.templates import ChatTemplate, TemplateError

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
DS_BOS = "<｜begin▁of▁sentence｜>"

CHAT = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Sort a list"},
]

# --- chatml ---------------------------------------------------------------------------------------


def test_chatml_render_full_chat() -> None:
    tpl = ChatTemplate.preset("chatml")
    assert tpl.render(CHAT, add_generation_prompt=True) == (
        "<|im_start|>system\nSYS<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>user\nSort a list<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tpl.render(CHAT[:2], add_generation_prompt=False) == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_chatml_conversation_and_magpie() -> None:
    tpl = ChatTemplate.preset("chatml")
    assert tpl.conversation("SYS", "Q") == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tpl.conversation(None, "Q") == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert tpl.magpie_prefix("SYS") == "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
    assert tpl.user_turn_end() == "<|im_end|>"
    assert tpl.eos_token == "<|im_end|>"


# --- qwen2.5 --------------------------------------------------------------------------------------


def test_qwen_inserts_default_system_only_when_missing() -> None:
    tpl = ChatTemplate.preset("qwen2.5")
    assert tpl.conversation(None, "Q") == (
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tpl.conversation("SYS", "Q") == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tpl.magpie_prefix("SYS") == "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
    assert tpl.user_turn_end() == "<|im_end|>"


# --- llama3 ---------------------------------------------------------------------------------------


def test_llama3_render_full_chat() -> None:
    tpl = ChatTemplate.preset("llama3")
    chat = [*CHAT[:3], {"role": "user", "content": "  Sort a list\n"}]  # content is trimmed
    assert tpl.render(chat, add_generation_prompt=True) == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSort a list<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_conversation_and_magpie() -> None:
    tpl = ChatTemplate.preset("llama3")
    assert tpl.conversation(None, "Q") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tpl.magpie_prefix("SYS") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
    )
    assert tpl.user_turn_end() == "<|eot_id|>"
    assert tpl.eos_token == "<|eot_id|>"


# --- deepseek-coder -------------------------------------------------------------------------------


def test_deepseek_coder_render_full_chat() -> None:
    tpl = ChatTemplate.preset("deepseek-coder")
    assert tpl.render(CHAT, add_generation_prompt=True) == (
        f"{DS_BOS}SYS\n"
        "### Instruction:\nHi\n"
        "### Response:\nHello\n<|EOT|>\n"
        "### Instruction:\nSort a list\n"
        "### Response:\n"
    )


def test_deepseek_coder_conversation_and_magpie() -> None:
    tpl = ChatTemplate.preset("deepseek-coder")
    assert tpl.conversation("SYS", "Q") == f"{DS_BOS}SYS\n### Instruction:\nQ\n### Response:\n"
    assert tpl.conversation(None, "Q") == f"{DS_BOS}### Instruction:\nQ\n### Response:\n"
    assert tpl.magpie_prefix("SYS") == f"{DS_BOS}SYS\n### Instruction:\n"
    # The turn is closed only by the generation prompt, so the fallback finds it.
    assert tpl.user_turn_end() == "### Response:"


def test_deepseek_coder_rejects_unknown_role() -> None:
    tpl = ChatTemplate.preset("deepseek-coder")
    with pytest.raises(TemplateError, match=r"deepseek-coder.*Unsupported role: tool"):
        tpl.render([{"role": "tool", "content": "x"}], add_generation_prompt=False)


# --- presets / settings ---------------------------------------------------------------------------


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(TemplateError) as e:
        ChatTemplate.preset("mistral")
    msg = str(e.value)
    assert "mistral" in msg
    for name in ("chatml", "qwen2.5", "llama3", "deepseek-coder"):
        assert name in msg


def test_from_settings_preset_and_file(tmp_path: Path) -> None:
    tpl = ChatTemplate.from_settings(ChatTemplateSettings(preset="chatml"))
    assert tpl.name == "chatml"
    assert tpl.user_turn_end() == "<|im_end|>"

    path = tmp_path / "t.jinja"
    path.write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tpl = ChatTemplate.from_settings(ChatTemplateSettings(file=str(path), bos_token="<s>"))
    assert tpl.name == str(path)
    assert tpl.render([{"role": "user", "content": "x"}], add_generation_prompt=False) == "<s>x"


def test_preset_token_override() -> None:
    tpl = ChatTemplate.preset("llama3", bos_token="")
    assert tpl.conversation(None, "Q").startswith("<|start_header_id|>user")


# --- files ----------------------------------------------------------------------------------------

SIMPLE = (
    "{% for m in messages %}"
    "{{ bos_token }}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def _write_config(tmp_path: Path, config: dict[str, object]) -> str:
    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return str(path)


def test_tokenizer_config_string_template(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path, {"chat_template": SIMPLE, "bos_token": "<s>", "eos_token": "</s>"}
    )
    tpl = ChatTemplate.from_file(path)
    assert tpl.name == path
    assert tpl.conversation("S", "U") == "<s>[system]S</s>\n<s>[user]U</s>\n[assistant]"
    assert tpl.magpie_prefix("S") == "<s>[system]S</s>\n<s>[user]"
    assert tpl.user_turn_end() == "</s>"


def test_tokenizer_config_list_form_and_dict_tokens(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path,
        {
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": SIMPLE},
            ],
            "bos_token": {"__type": "AddedToken", "content": "<B>", "lstrip": False},
            "eos_token": {"__type": "AddedToken", "content": "<E>"},
        },
    )
    tpl = ChatTemplate.from_file(path)
    assert (tpl.bos_token, tpl.eos_token) == ("<B>", "<E>")
    assert tpl.conversation(None, "U") == "<B>[user]U<E>\n[assistant]"


def test_tokenizer_config_explicit_tokens_override(tmp_path: Path) -> None:
    path = _write_config(tmp_path, {"chat_template": SIMPLE, "bos_token": "<s>", "eos_token": None})
    tpl = ChatTemplate.from_file(path, bos_token="", eos_token="<end>")
    assert tpl.conversation(None, "U") == "[user]U<end>\n[assistant]"


def test_tokenizer_config_list_without_default(tmp_path: Path) -> None:
    path = _write_config(tmp_path, {"chat_template": [{"name": "tool_use", "template": "x"}]})
    with pytest.raises(TemplateError, match="default"):
        ChatTemplate.from_file(path)


def test_tokenizer_config_without_chat_template(tmp_path: Path) -> None:
    path = _write_config(tmp_path, {"bos_token": "<s>"})
    with pytest.raises(TemplateError) as e:
        ChatTemplate.from_file(path)
    assert path in str(e.value)
    assert "chat_template" in str(e.value)


def test_raw_jinja_file(tmp_path: Path) -> None:
    path = tmp_path / "chat.jinja"
    # trim_blocks / lstrip_blocks apply, as in transformers.
    path.write_text(
        "{% for m in messages %}\n"
        "    <|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "<|assistant|>\n"
        "{% endif %}\n",
        encoding="utf-8",
    )
    tpl = ChatTemplate.from_file(str(path))
    assert tpl.conversation("S", "U") == (
        "    <|system|>S<|end|>\n    <|user|>U<|end|>\n<|assistant|>\n"
    )
    assert tpl.magpie_prefix("S") == "    <|system|>S<|end|>\n    <|user|>"
    assert tpl.user_turn_end() == "<|end|>"
    assert (tpl.bos_token, tpl.eos_token) == ("", "")


def test_raw_template_without_json_suffix_and_tojson(tmp_path: Path) -> None:
    path = tmp_path / "template.txt"
    path.write_text("{{ messages | tojson }}", encoding="utf-8")
    tpl = ChatTemplate.from_file(str(path))
    out = tpl.render([{"role": "user", "content": "é"}], add_generation_prompt=False)
    assert out == '[{"role": "user", "content": "é"}]'


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.json")
    with pytest.raises(TemplateError, match=r"nope\.json"):
        ChatTemplate.from_file(path)


def test_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jinja"
    path.write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"bad\.jinja"):
        ChatTemplate.from_file(str(path))


# --- render errors --------------------------------------------------------------------------------


def test_raise_exception_becomes_template_error(tmp_path: Path) -> None:
    src = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversation must start with a user message') }}"
        "{% endif %}ok"
    )
    path = _write_config(tmp_path, {"chat_template": src})
    tpl = ChatTemplate.from_file(path)
    assert tpl.render([{"role": "user", "content": "x"}], add_generation_prompt=False) == "ok"
    with pytest.raises(TemplateError, match="must start with a user message") as e:
        tpl.conversation("S", "U")
    assert path in str(e.value)


def test_undefined_error_becomes_template_error() -> None:
    tpl = ChatTemplate("{{ messages[0].missing.deeper }}", name="inline")
    with pytest.raises(TemplateError, match="inline"):
        tpl.render([{"role": "user", "content": "x"}], add_generation_prompt=False)


def test_sandbox_blocks_mutation() -> None:
    tpl = ChatTemplate("{{ messages.append(1) }}", name="inline")
    with pytest.raises(TemplateError, match="inline"):
        tpl.render([], add_generation_prompt=False)


def test_magpie_needs_user_content_in_output() -> None:
    tpl = ChatTemplate("{% for m in messages %}[{{ m['role'] }}]{% endfor %}", name="blind")
    with pytest.raises(TemplateError, match="blind"):
        tpl.magpie_prefix("S")
    with pytest.raises(TemplateError, match="blind"):
        tpl.user_turn_end()


def test_user_turn_end_empty_is_error() -> None:
    tpl = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}", name="bare")
    with pytest.raises(TemplateError, match="bare"):
        tpl.user_turn_end()


# --- transformers' environment --------------------------------------------------------------------

DATA = Path(__file__).resolve().parents[1] / "data" / "templates"

# The paper's five experts: file in tests/data/templates -> the preset that renders the same.
REAL = {
    "Athene-V2-Chat": "qwen2.5",  # same as Qwen2.5 whenever a system message is given
    "DeepSeek-Coder-V2-Lite-Instruct": "deepseek-v2",
    "Llama-3.3-70B-Instruct": "llama3.1",
    "Qwen2.5-72B-Instruct": "qwen2.5",
    "QwQ-32B-Preview": "qwen2.5",  # same as Qwen2.5 whenever a system message is given
}
PRESET_WITHOUT_SYSTEM = {"Qwen2.5-72B-Instruct", "Llama-3.3-70B-Instruct"} | {
    "DeepSeek-Coder-V2-Lite-Instruct"
}

CONVERSATIONS: list[tuple[list[dict[str, str]], bool]] = [
    (CHAT[:2], True),  # system + user, generation prompt
    (CHAT, True),  # multi-turn
    (CHAT[1:2], True),  # no system
    (CHAT[:2], False),  # system + user, no generation prompt (the Magpie shape)
    ([CHAT[0], {"role": "user", "content": "  Sort a list\n"}], True),  # whitespace kept or trimmed
    (CHAT[1:], True),  # no system, multi-turn
]


def _transformers_render(
    source: str, messages: list[dict[str, str]], add_generation_prompt: bool, **tokens: str
) -> str:
    """transformers' own ``apply_chat_template`` on a tokenizer that has only special tokens."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        **{k: v for k, v in tokens.items() if v},
    )
    fast.chat_template = source
    out = fast.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(out, str)
    return out


def _file_tokens(name: str) -> dict[str, str]:
    config = json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))
    tokens = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            tokens[key] = value
    return tokens


@pytest.mark.parametrize("name", sorted(REAL))
@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_real_template_matches_transformers(name: str, case: int) -> None:
    messages, gen = CONVERSATIONS[case]
    tpl = ChatTemplate.from_file(str(DATA / f"{name}.json"))
    expected = _transformers_render(tpl.source, messages, gen, **_file_tokens(name))
    assert tpl.render(messages, add_generation_prompt=gen) == expected
    preset = ChatTemplate.preset(REAL[name])
    if messages[0]["role"] == "system" or name in PRESET_WITHOUT_SYSTEM:
        assert preset.render(messages, add_generation_prompt=gen) == expected


def test_real_templates_say_what_they_are() -> None:
    # Guards against a file being swapped for another family's template.
    llama = ChatTemplate.from_file(str(DATA / "Llama-3.3-70B-Instruct.json"))
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" in (
        llama.conversation("S", "Q")
    )
    ds = ChatTemplate.from_file(str(DATA / "DeepSeek-Coder-V2-Lite-Instruct.json"))
    assert ds.render(CHAT, add_generation_prompt=True) == (
        f"{DS_BOS}SYS\n\nUser: Hi\n\nAssistant: Hello<｜end▁of▁sentence｜>"
        "User: Sort a list\n\nAssistant:"
    )
    for name, default in [
        ("Qwen2.5-72B-Instruct", QWEN_SYSTEM),
        ("Athene-V2-Chat", "You are Athene-V2, a language model trained by Nexusflow."),
        ("QwQ-32B-Preview", "You are a helpful and harmless assistant."),
    ]:
        tpl = ChatTemplate.from_file(str(DATA / f"{name}.json"))
        assert tpl.conversation(None, "Q").startswith(f"<|im_start|>system\n{default}")


USER_OPENS = {
    "Athene-V2-Chat": ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n", "<|im_end|>"),
    "DeepSeek-Coder-V2-Lite-Instruct": (f"{DS_BOS}S\n\nUser: ", "Assistant:"),
    "Llama-3.3-70B-Instruct": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "S<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|>",
    ),
    "Qwen2.5-72B-Instruct": ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n", "<|im_end|>"),
    "QwQ-32B-Preview": ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n", "<|im_end|>"),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_template_magpie_prefix_and_turn_end(name: str) -> None:
    tpl = ChatTemplate.from_file(str(DATA / f"{name}.json"))
    prefix, end = USER_OPENS[name]
    assert tpl.magpie_prefix("S") == prefix
    assert tpl.user_turn_end() == end
    # The prefix is exactly what precedes the user's text, and the turn end is what follows it.
    full = tpl.render(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Write fizzbuzz."}],
        add_generation_prompt=True,
    )
    assert full.startswith(prefix + "Write fizzbuzz.")
    assert full[len(prefix + "Write fizzbuzz.") :].lstrip().startswith(end)
    preset = ChatTemplate.preset(REAL[name])
    assert (preset.magpie_prefix("S"), preset.user_turn_end()) == (prefix, end)


@pytest.mark.parametrize(
    ("name", "stops"),
    [
        ("Llama-3.3-70B-Instruct", ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")),
        ("Qwen2.5-72B-Instruct", ("<|im_end|>", "<|endoftext|>")),
        ("DeepSeek-Coder-V2-Lite-Instruct", ("<｜end▁of▁sentence｜>",)),
    ],
)
def test_stop_tokens_file_and_preset(name: str, stops: tuple[str, ...]) -> None:
    assert ChatTemplate.from_file(str(DATA / f"{name}.json")).stop_tokens() == stops
    assert ChatTemplate.preset(REAL[name]).stop_tokens() == stops


def test_stop_tokens_of_presets_start_with_eos() -> None:
    assert ChatTemplate.preset("llama3").stop_tokens()[-1] == "<|end_of_text|>"
    assert ChatTemplate.preset("chatml").stop_tokens() == ("<|im_end|>",)
    assert ChatTemplate.preset("deepseek-coder").stop_tokens()[0] == "<|EOT|>"
    assert ChatTemplate.preset("llama3", eos_token="<E>").stop_tokens()[0] == "<E>"
    assert ChatTemplate("x", name="bare").stop_tokens() == ()


def test_new_presets_render() -> None:
    ds = ChatTemplate.preset("deepseek-v2")
    assert ds.conversation("SYS", "Q") == f"{DS_BOS}SYS\n\nUser: Q\n\nAssistant:"
    assert ds.eos_token == "<｜end▁of▁sentence｜>"
    llama = ChatTemplate.preset("llama3.1")
    assert llama.conversation(None, "Q") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


# Llama-3.2's system block prints today's date with strftime_now; templates test `tools` and
# `documents` against none. Before the fix: "'strftime_now' is undefined" and a tool preamble.
ENV_PROBE = (
    "{{- bos_token }}{{ strftime_now('%Y') }}|"
    "{%- if tools is not none %}TOOLS{% endif %}"
    "{%- if documents is not none %}DOCS{% endif %}|"
    "{%- set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
    "{{ ns.n }}|{{ dict(a=1) | tojson }}|{{ messages | tojson }}|"
    "{%- for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
    "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    "{%- if 'name' in messages[-1] %}NAMED{% endif %}{{ pad_token }}"
)


def test_environment_matches_transformers() -> None:
    from datetime import datetime

    # A None-valued key is dropped before rendering, as transformers does.
    messages = cast(
        "list[dict[str, str]]", [CHAT[0], {"role": "user", "content": "<b>é</b>", "name": None}]
    )
    tpl = ChatTemplate(
        ENV_PROBE,
        name="probe",
        bos_token="<s>",
        eos_token="</s>",
        special_tokens={"pad_token": "<pad>"},
    )
    ours = tpl.render(messages, add_generation_prompt=False)
    assert ours == _transformers_render(
        ENV_PROBE, messages, False, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    assert ours.startswith(f"<s>{datetime.now().year}||2|")
    assert '"content": "<b>é</b>"' in ours and "NAMED" not in ours
    assert ours.endswith("<b>é</b><pad>")


def test_namespace_refuses_underscore_attributes() -> None:
    tpl = ChatTemplate("{% set ns = namespace(_x=1) %}{{ ns._x }}", name="ns")
    with pytest.raises(TemplateError, match="underscore"):
        tpl.render([], add_generation_prompt=False)


def test_template_error_is_a_permanent_arena_error() -> None:
    from warriorcoder.errors import ArenaError

    with pytest.raises(ArenaError) as e:
        ChatTemplate.preset("nope")
    assert isinstance(e.value, ValueError)
    assert not e.value.retryable
