"""Chat templates rendered client-side with Jinja, exactly as Hugging Face transformers does.

Usage::

    tpl = ChatTemplate.preset("qwen2.5")  # or ChatTemplate.from_file("tokenizer_config.json")
    prompt = tpl.conversation("You are terse.", "Reverse a list in Python.")
    prefix = tpl.magpie_prefix("You help with Python coding problems.")
    stops = [tpl.user_turn_end(), *tpl.stop_tokens()]

The Jinja environment follows transformers 5.23 (``transformers/utils/chat_template_utils.py``,
``_cached_compile_jinja_template`` and ``render_jinja_template``; the template variables come from
``PreTrainedTokenizerBase.apply_chat_template`` in ``tokenization_utils_base.py``):

- an ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the
  ``loopcontrols`` extension and a ``{% generation %}`` block tag (transformers' AssistantTracker;
  here it only renders its body, since we never need the assistant-token mask);
- the ``tojson`` filter with transformers' signature (no HTML escaping, ``ensure_ascii=False``);
- the globals ``raise_exception``, ``strftime_now`` (Llama 3.2 prints today's date with it),
  ``dict`` and a ``namespace`` that refuses underscore-prefixed attributes;
- the variables ``messages`` (message keys whose value is None dropped, as transformers does),
  ``tools=None``, ``documents=None``, ``add_generation_prompt`` and the tokenizer's special tokens
  (``bos_token``, ``eos_token`` and, from a tokenizer config, ``unk/sep/pad/cls/mask_token``).

One deliberate difference: ``bos_token`` and ``eos_token`` are always passed (as ``""`` when
unset), where transformers leaves an unset token undefined; templates that concatenate
``bos_token`` then render instead of failing when a caller blanks the BOS.

``magpie_prefix`` and ``user_turn_end`` are derived from any template by rendering a sentinel user
message and cutting around it, so they need no per-family code. ``stop_tokens`` lists the special
tokens that end a generation (EOS and the family's other end-of-text tokens): a mined instruction
is cut there.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from warriorcoder.errors import ArenaError

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


class TemplateError(ArenaError, ValueError):
    """A chat template could not be loaded or rendered; the message names the file or preset."""

    reason = "chat_template"


# --- the environment (transformers' chat-template environment) -----------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``: transformers marks assistant tokens with it."""

    tags = {"generation"}  # noqa: RUF012 - the type jinja2.ext.Extension declares

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        node = jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body)
        node.set_lineno(lineno)
        return node

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    # transformers raises jinja2's TemplateError; ``render`` wraps it with the template's name.
    raise jinja2.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters, which would change the prompt.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """The ``dict`` global: builds dicts without exposing the ``dict`` type to the sandbox."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _check_namespace_name(name: object) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}"
        )


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses dunder/underscore attributes (CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's trick: ``self`` may be a key
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


_ENV = _make_env()

# --- presets ----------------------------------------------------------------------------------
# Each preset is written in this project's words; for conversations without tools it renders byte
# for byte what the model's own template renders (tests/unit/test_templates.py compares them
# with the real templates under tests/data/templates/).

# ChatML as Qwen, Athene and most fine-tunes use it.
_CHATML = r"""
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Qwen2.5-*-Instruct: ChatML plus Qwen's default system turn when none is given.
_QWEN25_DEFAULT_SYSTEM = r"""
{%- if not messages or messages[0]['role'] != 'system' %}
{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. '
    + 'You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
"""

# Meta-Llama-3-*-Instruct (3.0): header blocks, trimmed content, BOS before the first turn.
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

# Llama-3.1/3.3-*-Instruct without tools: the system turn always opens with the knowledge-cutoff
# and date lines ("26 Jul 2024" unless ``date_string`` is given), then the trimmed system message.
_LLAMA31 = r"""
{{- bos_token }}
{%- if not date_string is defined %}
{%- set date_string = '26 Jul 2024' %}
{%- endif %}
{%- if messages and messages[0]['role'] == 'system' %}
{%- set system_message = messages[0]['content'] | trim %}
{%- set messages = messages[1:] %}
{%- else %}
{%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{{- 'Cutting Knowledge Date: December 2023\n' }}
{{- 'Today Date: ' + date_string + '\n\n' }}
{{- system_message + '<|eot_id|>' }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'
    + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# deepseek-coder-*-instruct (V1): Alpaca-style sections, <|EOT|> after each answer.
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

# DeepSeek-V2 family (DeepSeek-Coder-V2-Lite-Instruct, DeepSeek-V2-Chat): "User: …\n\n", answers
# as "Assistant: …<EOS>", the generation prompt "Assistant:" without a trailing space; other
# roles are dropped.
_DEEPSEEK_V2 = r"""
{{- bos_token }}
{%- for message in messages %}
{%- if message['role'] == 'user' %}
{{- 'User: ' + message['content'] + '\n\n' }}
{%- elif message['role'] == 'assistant' %}
{{- 'Assistant: ' + message['content'] + eos_token }}
{%- elif message['role'] == 'system' %}
{{- message['content'] + '\n\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- 'Assistant:' }}
{%- endif %}
"""

_DS_BOS = "<｜begin▁of▁sentence｜>"
_DS_EOS = "<｜end▁of▁sentence｜>"
_LLAMA_STOPS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
_QWEN_STOPS = ("<|im_end|>", "<|endoftext|>")


class _Preset:
    __slots__ = ("bos", "eos", "source", "stops")

    def __init__(self, source: str, bos: str, eos: str, stops: tuple[str, ...]) -> None:
        self.source, self.bos, self.eos, self.stops = source.strip(), bos, eos, stops


_PRESETS: dict[str, _Preset] = {
    # Generic ChatML (OpenHermes and friends).
    "chatml": _Preset(_CHATML, "", "<|im_end|>", ("<|im_end|>",)),
    # Qwen/Qwen2.5-72B-Instruct tokenizer_config.json; also Athene-V2-Chat and QwQ-32B-Preview
    # whenever a system message is given (only their default system text differs).
    "qwen2.5": _Preset(_QWEN25_DEFAULT_SYSTEM + _CHATML, "", "<|im_end|>", _QWEN_STOPS),
    # meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json.
    "llama3": _Preset(_LLAMA3, "<|begin_of_text|>", "<|eot_id|>", _LLAMA_STOPS),
    # meta-llama/Llama-3.1-*-Instruct and Llama-3.3-70B-Instruct tokenizer_config.json.
    "llama3.1": _Preset(_LLAMA31, "<|begin_of_text|>", "<|eot_id|>", _LLAMA_STOPS),
    # deepseek-ai/deepseek-coder-*-instruct (V1) tokenizer_config.json.
    "deepseek-coder": _Preset(_DEEPSEEK_CODER, _DS_BOS, "<|EOT|>", ("<|EOT|>", _DS_EOS)),
    # deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct tokenizer_config.json.
    "deepseek-v2": _Preset(_DEEPSEEK_V2, _DS_BOS, _DS_EOS, (_DS_EOS,)),
}

# Special tokens that end a generation in the model families we know. A template loaded from a
# file stops on those of them its tokenizer config registers, besides its EOS.
_END_OF_TEXT = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    _DS_EOS,
    "<|EOT|>",
)

_SPECIAL_TOKEN_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _registered_tokens(config: Mapping[str, Any]) -> set[str]:
    """Every token string a tokenizer config declares (special tokens and added tokens)."""
    found: set[str] = set()
    for key in ("bos_token", "eos_token", *_SPECIAL_TOKEN_KEYS):
        if tok := _token(config.get(key)):
            found.add(tok)
    added = config.get("added_tokens_decoder")
    if isinstance(added, dict):
        found.update(t for v in added.values() if (t := _token(v)))
    extra = config.get("additional_special_tokens")
    if isinstance(extra, list):
        found.update(t for v in extra if (t := _token(v)))
    return found


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

    def __init__(
        self,
        source: str,
        *,
        name: str,
        bos_token: str = "",
        eos_token: str = "",
        special_tokens: Mapping[str, str] | None = None,
        stop_tokens: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        # Further template variables from the tokenizer (pad_token, unk_token, ...).
        self.special_tokens = dict(special_tokens or {})
        self._stops = tuple(stop_tokens)
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
            p = _PRESETS[name]
        except KeyError:
            raise TemplateError(
                f"unknown chat template preset {name!r}; known: {', '.join(_PRESETS)}"
            ) from None
        return cls(
            p.source,
            name=name,
            bos_token=p.bos if bos_token is None else bos_token,
            eos_token=p.eos if eos_token is None else eos_token,
            stop_tokens=p.stops,
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
        special = {k: t for k in _SPECIAL_TOKEN_KEYS if (t := _token(config.get(k)))}
        registered = _registered_tokens(config)
        stops = [t for t in _END_OF_TEXT if t in registered or t in source]
        return cls(
            source,
            name=path,
            bos_token=bos or "",
            eos_token=eos or "",
            special_tokens=special,
            stop_tokens=stops,
        )

    @classmethod
    def from_settings(cls, s: _TemplateSettings) -> ChatTemplate:
        if s.preset is not None:
            return cls.preset(s.preset, bos_token=s.bos_token, eos_token=s.eos_token)
        if s.file is not None:
            return cls.from_file(s.file, bos_token=s.bos_token, eos_token=s.eos_token)
        raise TemplateError("chat template settings need exactly one of preset or file")

    def stop_tokens(self) -> tuple[str, ...]:
        """The special tokens that end a generation: EOS first, then the family's other ones.

        E.g. ``('<|eot_id|>', '<|eom_id|>', '<|end_of_text|>')`` for Llama 3; a mined instruction
        or an answer is cut at the first of them.
        """
        return tuple(dict.fromkeys(t for t in (self.eos_token, *self._stops) if t))

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        # transformers drops None-valued keys (e.g. OpenAI's content=None) before rendering.
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        variables: dict[str, Any] = {
            **self.special_tokens,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            return self._template.render(
                messages=chat,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.TemplateError as e:
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
