"""Chat templates rendered client-side with Jinja, the way Hugging Face transformers renders them.

Usage::

    tpl = ChatTemplate.preset("qwen2.5")  # or ChatTemplate.from_file("tokenizer_config.json")
    prompt = tpl.conversation("You are terse.", "Reverse a list in Python.")

The environment matches transformers' ``apply_chat_template``: a sandboxed Jinja environment with
``trim_blocks`` and ``lstrip_blocks``, a ``raise_exception`` global, a ``tojson`` filter and the
variables ``messages``, ``add_generation_prompt``, ``bos_token`` and ``eos_token``.
``magpie_prefix`` and ``user_turn_end`` are derived from any template by rendering a sentinel user
message and cutting around it, so they need no per-family code.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, NoReturn, Protocol

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplate", "TemplateError"]


class _TemplateSettings(Protocol):
    """What ``from_settings`` reads: ``warriorcoder.runtime.settings.ChatTemplateSettings``."""

    @property
    def preset(self) -> str | None: ...
    @property
    def file(self) -> str | None: ...
    @property
    def bos_token(self) -> str | None: ...
    @property
    def eos_token(self) -> str | None: ...


class TemplateError(ValueError):
    """A chat template could not be loaded or rendered; the message names the file or preset."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


_ENV = _make_env()

_CHATML = r"""
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

_QWEN25_DEFAULT_SYSTEM = r"""
{%- if not messages or messages[0]['role'] != 'system' %}
{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. '
    + 'You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
"""

_LLAMA3 = r"""
{%- for message in messages %}
{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'
    + message['content'] | trim + '<|eot_id|>' %}
{%- if loop.first %}
{%- set content = bos_token + content %}
{%- endif %}
{{- content }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

_DEEPSEEK_CODER = r"""
{{- bos_token }}
{%- for message in messages %}
{%- if message['role'] == 'system' %}
{{- message['content'] + '\n' }}
{%- elif message['role'] == 'user' %}
{{- '### Instruction:\n' + message['content'] + '\n' }}
{%- elif message['role'] == 'assistant' %}
{{- '### Response:\n' + message['content'] + '\n<|EOT|>\n' }}
{%- else %}
{{- raise_exception('Unsupported role: ' + message['role']) }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '### Response:\n' }}
{%- endif %}
"""

# name -> (template source, bos_token, eos_token)
_PRESETS: dict[str, tuple[str, str, str]] = {
    "chatml": (_CHATML, "", "<|im_end|>"),
    "qwen2.5": (_QWEN25_DEFAULT_SYSTEM + _CHATML, "", "<|im_end|>"),
    "llama3": (_LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "deepseek-coder": (_DEEPSEEK_CODER, "<｜begin▁of▁sentence｜>", "<|EOT|>"),
}


def _token(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick_template(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        default = named.get("default")
        if isinstance(default, str):
            return default
        found = sorted(map(str, named))
        raise TemplateError(f"{path}: chat_template list has no 'default' template (found {found})")
    raise TemplateError(f"{path}: chat_template must be a string or a list of named templates")


class ChatTemplate:
    """One compiled chat template plus the special tokens it is rendered with."""

    def __init__(self, source: str, *, name: str, bos_token: str = "", eos_token: str = "") -> None:
        self.name = name
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template {name}: {e}") from e

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r})"

    @classmethod
    def preset(
        cls, name: str, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> ChatTemplate:
        try:
            source, bos, eos = _PRESETS[name]
        except KeyError:
            raise TemplateError(
                f"unknown chat template preset {name!r}; known: {', '.join(_PRESETS)}"
            ) from None
        return cls(
            source.strip(),
            name=name,
            bos_token=bos if bos_token is None else bos_token,
            eos_token=eos if eos_token is None else eos_token,
        )

    @classmethod
    def from_file(
        cls, path: str, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> ChatTemplate:
        """Load a tokenizer_config.json (its ``chat_template``) or a raw Jinja template file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"chat template {path}: cannot read: {e}") from e
        config: Any = None
        if not path.endswith(".jinja"):
            try:
                config = json.loads(text)
            except ValueError:
                config = None
        if not isinstance(config, dict):
            return cls(text, name=path, bos_token=bos_token or "", eos_token=eos_token or "")
        if "chat_template" in config:
            source = _pick_template(config["chat_template"], path)
        else:
            # Newer transformers versions save the template next to the config instead.
            sibling = Path(path).with_name("chat_template.jinja")
            if not sibling.is_file():
                raise TemplateError(f"{path}: no chat_template in tokenizer config")
            source = sibling.read_text(encoding="utf-8")
        bos = _token(config.get("bos_token")) if bos_token is None else bos_token
        eos = _token(config.get("eos_token")) if eos_token is None else eos_token
        return cls(source, name=path, bos_token=bos or "", eos_token=eos or "")

    @classmethod
    def from_settings(cls, s: _TemplateSettings) -> ChatTemplate:
        if s.preset is not None:
            return cls.preset(s.preset, bos_token=s.bos_token, eos_token=s.eos_token)
        if s.file is not None:
            return cls.from_file(s.file, bos_token=s.bos_token, eos_token=s.eos_token)
        raise TemplateError("chat template settings need exactly one of preset or file")

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except (jinja2.TemplateError, TemplateError) as e:
            raise TemplateError(f"chat template {self.name}: {e}") from e

    def _split_at_sentinel(self, system: str, *, add_generation_prompt: bool) -> tuple[str, str]:
        sentinel = f"WCSENTINEL{uuid.uuid4().hex}"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": sentinel}]
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        parts = text.split(sentinel)
        if len(parts) != 2:
            raise TemplateError(
                f"chat template {self.name}: user content appears {len(parts) - 1} times "
                "in the rendering, expected exactly once"
            )
        return parts[0], parts[1]

    def magpie_prefix(self, system: str) -> str:
        """The system turn plus an opened user turn, for Magpie-style instruction mining."""
        return self._split_at_sentinel(system, add_generation_prompt=False)[0]

    def user_turn_end(self) -> str:
        """The text that closes a user turn (stripped), e.g. ``<|im_end|>``: a stop string."""
        end = self._split_at_sentinel("SYSTEM", add_generation_prompt=False)[1].strip()
        if not end:
            end = self._split_at_sentinel("SYSTEM", add_generation_prompt=True)[1].strip()
        if not end:
            raise TemplateError(f"chat template {self.name}: cannot find the end of a user turn")
        return end

    def conversation(self, system: str | None, user: str) -> str:
        """The prompt for answering ``user``: [system?, user] plus the generation prompt."""
        messages = [] if system is None else [{"role": "system", "content": system}]
        messages.append({"role": "user", "content": user})
        return self.render(messages, add_generation_prompt=True)
