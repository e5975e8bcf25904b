import json
from pathlib import Path

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
