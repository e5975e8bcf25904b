"""Scripted LLMs: deterministic stand-ins for the arena's miner, answerer and judge.

Usage::

    model = load_models("services/warriorcoder/testing/scripted-arena-models.yaml")[0]
    params = {"max_tokens": 512, "stop": ["<|im_end|>"]}
    text = apply_sampling(model.generate(prompt, params), params)

The role is read off the prompt. A judge prompt holds ``ANSWER_A_START``; a mining prompt holds
``challenge_system_prompt``'s phrase "wide range of"; anything else gets an answer. An answer ends
with the line ``quality=<strength>`` and the judge prefers the higher quality.

Judge parsing rule (answers are untrusted text that may contain markers or verdict labels): the
answers are read by the nonce of the prompt's own markers (``warriorcoder.arena.prompts.
read_judge_prompt``), as a model reading the prompt sees them, so a forged marker inside an answer
stays part of that answer. Within each answer only the *last* line reading exactly
``quality=<n>`` counts (answerers write it last), so fake tags or ``[[A]]``/``[[B]]`` inside an
answer cannot flip a verdict. An answer without a tag has quality 0.

Sampling follows the vLLM contract of ``warriorcoder.runtime.vllm`` (``validate_sampling_params``,
``stop_strings``, ``SAMPLING_KEYS`` and the default ``max_tokens`` are its own, re-exported here).
``sample`` also says what vLLM would report: the finish reason (``length`` when ``max_tokens`` cut
the text, else ``stop``) and the number of tokens (runs of non-whitespace) generated.

Execution-checked battles (the verifier) build on these behaviours, all deterministic:

- **Test writer.** A prompt of ``warriorcoder.arena.test_writing.writer_messages`` (it holds
  ``TASK_START_MARK``) gets a reply with one ```python block: ``scripted_code.scripted_tests``,
  four pytest tests of the scripted spec below, for the task's last backticked identifier (the one
  the answerers name their function after; ``solve`` when there is none). With
  ``garble_first_tests: n`` a model's first n test-writing replies hold no code block (the
  responder re-asks; a huge n means never any usable tests).
- **Answers.** The scripted spec: ``<ident>(data)`` returns the sorted distinct items of ``data``.
  What an answer's code does is the model's ``skill``: ``correct`` passes all 4 tests,
  ``partial`` (keeps duplicates) passes 3, ``wrong`` (returns ``data`` unchanged) passes 2. By
  default the skill follows the strength (>= 8 correct, >= 4 partial, else wrong): in the shipped
  arena alpha (9) is correct, beta (5) partial, gamma (2) wrong, so the stronger model always
  passes more tests. Set ``skill`` to decouple them (e.g. two models of equal strength, one
  ``correct`` and one ``wrong``: the judges cannot tell them apart by quality, the tests can).
- **Hostile code.** An answer is hostile when its prompt (the challenge's instruction) holds a
  marker ``[[hostile:<kind>]]`` or ``[[hostile:<kind>:<argument>]]`` (every answerer of that
  challenge turns hostile; a marker that does not parse is ignored), or when the model is set
  ``hostile: <kind>[:<argument>]`` (all its answers, whatever the challenge), or ``hostile: any``
  (a kind per challenge: ``HOSTILE_KINDS[crc32(ident) % 8]``). The marker wins over the setting,
  both over ``skill``. Kinds: socket, write, read, fork, memory, output, sleep, spin; what each
  does and reports is in ``warriorcoder.testing.scripted_code``. A hostile answer still ends with
  the model's ``quality=<strength>`` line.
- **Judges and execution results.** When a judge prompt carries the execution results (the
  "Execution results" blocks of ``arena.prompts.judge_messages``, read by their nonce) and the
  answers' qualities tie, the judge prefers the answer that passed more tests
  (``execution_passed``: a timeout or no code counts 0 passed, a sandbox error is unknown); when
  the qualities differ, or the counts are equal or unknown, it judges by quality as before.

Judge family bias (the arena's ``judge.family_policy``), modelled on self-preference: LLM judges
recognise and favour answers in their own or their family's style (Panickssery et al., "LLM
Evaluators Recognize and Favor Their Own Generations", NeurIPS 2024; Arena-Hard's notes on
self-bias). A model with a ``family`` signs its answers with a line ``family=<family>`` just
before its quality line (its "style"; only the last such line of an answer counts, as for
quality). A judge set ``family_bias: true`` (it needs a ``family``) votes for the answer of its
own family whenever exactly one of the two answers carries it, whatever the qualities, and says
so in its reasoning; otherwise it judges like any other scripted judge.
"""

from __future__ import annotations

import random
import re
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from warriorcoder.arena.prompts import ANSWER_A_START, read_execution_results, read_judge_prompt
from warriorcoder.arena.quality import QUESTION_START_MARK
from warriorcoder.arena.test_writing import TASK_START_MARK, read_writer_prompt
from warriorcoder.localmodels.models_file import (
    check_model_name,
    load_models_file,
    parse_models_file,
)
from warriorcoder.runtime.vllm import DEFAULT_MAX_TOKENS as VLLM_DEFAULT_MAX_TOKENS
from warriorcoder.runtime.vllm import (
    SAMPLING_KEYS,
    Completion,
    stop_strings,
    validate_sampling_params,
)
from warriorcoder.testing.scripted_code import (
    HOSTILE_KINDS,
    SKILLS,
    Hostile,
    Skill,
    answer_code,
    hostile_code,
    parse_hostile,
    scripted_tests,
    skill_for,
)

__all__ = [
    "HOSTILE_MARK_RE",
    "MINING_PHRASE",
    "SAMPLING_KEYS",
    "SCRIPTED_MODELS",
    "VLLM_DEFAULT_MAX_TOKENS",
    "ScriptedModel",
    "apply_sampling",
    "execution_passed",
    "family_of",
    "judge_answers",
    "load_models",
    "parse_models",
    "quality_of",
    "role_of",
    "sample",
    "stop_strings",
    "stream_chunks",
    "validate_sampling_params",
]

MINING_PHRASE = "wide range of"  # part of challenge_system_prompt (a unit test checks)
MINER_JUNK = "\n<|im_start|>assistant\nSure! Let me work through this step by step."

_QUALITY_RE = re.compile(r"^quality=(\d+)[ \t\r]*$", re.MULTILINE)
_FAMILY_RE = re.compile(r"^family=([a-z0-9][a-z0-9._-]*)[ \t\r]*$", re.MULTILINE)
_MINING_LANG_RE = re.compile(r"(\S+) coding problems")
_ANSWER_LANG_RE = re.compile(r"expert (\S+) programmer")
_IDENT_RE = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")
_TOKEN_RE = re.compile(r"\S+")
HOSTILE_MARK_RE = re.compile(r"\[\[hostile:([^\]\s]+)\]\]")  # in a challenge: hostile answers
# The test-count line of a run that finished (``arena.prompts.execution_summary``'s second line).
_TESTS_LINE_RE = re.compile(r"^tests: (\d+) passed, ")
_SEED_SPACE = 100_003  # mining numbers: seed-derived block plus a per-model call counter

# Instructions are composed from three independent parts so that, like a real model's, they
# rarely share most of their words: the near-duplicate filter (Jaccard 0.5 over unigrams) must
# let them through, and only true repeats are caught.
_SUBJECTS = (
    "a list of integers",
    "a sentence of mixed-case words",
    "a binary search tree",
    "a directed acyclic graph",
    "a matrix of floating-point numbers",
    "a stream of log lines",
    "a nested JSON document",
    "a CSV file with quoted fields",
    "a singly linked list",
    "a dictionary of user records",
    "an array of Unix timestamps",
    "a set of closed intervals",
    "a Markdown table",
    "a priority queue of tasks",
    "a grid maze of walls and corridors",
    "a deck of playing cards",
    "an HTTP access log",
    "a polynomial given by coefficients",
    "a trie of dictionary words",
    "a ring buffer of sensor readings",
)
_ACTIONS = (
    "finds the longest strictly increasing run in",
    "removes duplicated entries from",
    "computes a sliding-window median over",
    "serialises and then parses back",
    "validates every invariant of",
    "counts distinct shortest routes through",
    "merges two sorted copies of",
    "rotates by k positions",
    "compresses with run-length coding",
    "partitions into balanced halves",
    "detects cycles inside",
    "renders as pretty text",
    "samples uniformly at random from",
    "builds a frequency histogram of",
    "reverses in place",
    "groups by a caller-supplied key",
    "flattens recursively",
    "diffs against a second instance of",
    "paginates lazily through",
    "memoises lookups over",
)
_CONSTRAINTS = (
    "in linear time", "without recursion", "using constant extra memory",
    "raising ValueError on malformed input", "with full type hints", "safely across threads",
    "as a generator", "with an accompanying pytest suite", "handling empty input gracefully",
    "while preserving original order", "within logarithmic depth", "with the standard library",
    "returning an immutable result", "supporting Unicode text", "with amortised constant updates",
    "logging each step at debug level", "accepting an optional comparator",
    "benchmarking against a naive version", "documenting worst-case complexity",
    "streaming results incrementally",
)  # fmt: skip
# A random "scenario" of distinct domain words makes each instruction's vocabulary its own.
_DOMAIN = [
    "inventory",
    "payroll",
    "telemetry",
    "genomics",
    "weather",
    "checkout",
    "ledger",
    "playlist",
    "warehouse",
    "satellite",
    "thermostat",
    "invoice",
    "courier",
    "library",
    "museum",
    "orchard",
    "airport",
    "clinic",
    "stadium",
    "brewery",
    "bakery",
    "volcano",
    "glacier",
    "harbour",
    "railway",
    "subway",
    "tram",
    "ferry",
    "kiosk",
    "arcade",
    "casino",
    "theatre",
    "vineyard",
    "observatory",
    "aquarium",
    "greenhouse",
    "pharmacy",
    "pottery",
    "sawmill",
    "quarry",
    "refinery",
    "turbine",
    "battery",
    "drone",
    "robot",
    "rover",
    "compass",
    "lantern",
    "beacon",
    "anchor",
    "saddle",
    "kayak",
    "canoe",
    "glider",
    "parachute",
    "marathon",
    "chess",
    "poker",
    "sudoku",
    "crossword",
    "origami",
    "quilt",
    "tapestry",
    "mosaic",
    "sculpture",
    "fresco",
    "symphony",
    "podcast",
    "newsletter",
    "forum",
    "wiki",
    "blog",
    "gallery",
    "census",
    "ballot",
    "auction",
    "mortgage",
    "pension",
    "tariff",
    "customs",
    "passport",
    "visa",
    "embassy",
    "parliament",
    "tribunal",
    "archive",
    "manuscript",
    "atlas",
    "almanac",
    "tournament",
    "league",
    "roster",
    "scoreboard",
    "referee",
    "stopwatch",
    "metronome",
    "recipe",
    "pantry",
    "spice",
]

Role = Literal["judge", "miner", "scorer", "tester", "answerer"]

# Every LOW_QUALITY_EVERY-th mined instruction is vague; the scripted scorer rates it low.
LOW_QUALITY_EVERY = 7
_VAGUE = "Write some {language} code that does something useful with a list of numbers."

# The scripted arena of `warriorcoder up --scripted` and the tests.
SCRIPTED_MODELS = Path(__file__).with_name("scripted-arena-models.yaml")


def role_of(prompt: str) -> Role:
    """Which role a prompt asks for."""
    if ANSWER_A_START in prompt:
        return "judge"
    if QUESTION_START_MARK in prompt:
        return "scorer"
    if TASK_START_MARK in prompt:
        return "tester"
    if MINING_PHRASE in prompt:
        return "miner"
    return "answerer"


def quality_of(answer: str) -> int:
    """The scripted quality of an answer: its last ``quality=<n>`` line, 0 when it has none."""
    tags = _QUALITY_RE.findall(answer)
    return int(tags[-1]) if tags else 0


def family_of(answer: str) -> str | None:
    """The family an answer is signed with: its last ``family=<family>`` line, else None."""
    tags = _FAMILY_RE.findall(answer)
    return tags[-1] if tags else None


def judge_answers(prompt: str) -> tuple[str, str]:
    """Answers A and B of a judge prompt, by the rule in the module docstring."""
    parts = read_judge_prompt(prompt)
    return ("", "") if parts is None else (parts[1], parts[2])


def execution_passed(prompt: str) -> tuple[int | None, int | None]:
    """Tests passed by answers A and B as a judge prompt's execution results state them.

    The summaries are read by the prompt's nonce (``arena.prompts.read_execution_results``), and
    in each only the lines the arena writes before the run's own output: a run that finished
    counts the number on its second line ("tests: <n> passed, ..."), a run that timed out or had
    no code counts 0, a sandbox error (not the answer's fault) or anything else is None, as is
    an answer of a prompt without execution results. Text in the answers or in a run's output
    cannot change the counts.
    """
    read = read_execution_results(prompt)
    if read is None:
        return None, None
    return _passed(read[0]), _passed(read[1])


def _passed(summary: str) -> int | None:
    lines = summary.splitlines()
    status = lines[0] if lines else ""
    if status.startswith("status: ran"):
        m = _TESTS_LINE_RE.match(lines[1]) if len(lines) > 1 else None
        return int(m.group(1)) if m else None
    if status.startswith(("status: timed out", "status: no code")):
        return 0
    return None


def pick_choice(text: str, choices: list[str]) -> str:
    """Guided choice for a scripted model: the choice its free text ends on, else the first."""
    found = [(text.rfind(c), c) for c in choices if c in text]
    return max(found)[1] if found else choices[0]


def apply_sampling(text: str, params: Mapping[str, Any]) -> str:
    """Cut generated text as vLLM would: at most max_tokens tokens, then before the first stop.

    A token is a run of non-whitespace; the text is kept verbatim up to the end of the last kept
    token. The stop string itself is excluded. Params are validated first.
    """
    return sample(text, params).text


def sample(text: str, params: Mapping[str, Any]) -> Completion:
    """``apply_sampling`` with what vLLM reports: ``length`` if max_tokens cut the text (and no
    stop string came first), else ``stop``; the tokens generated (a stop string's own count)."""
    checked = validate_sampling_params(params)
    max_tokens = checked.get("max_tokens", VLLM_DEFAULT_MAX_TOKENS)
    reason = "stop"
    for count, match in enumerate(_TOKEN_RE.finditer(text), start=1):
        if count == max_tokens:
            if match.end() < len(text.rstrip()):  # more tokens would have followed
                reason = "length"
            text = text[: match.end()]
            break
    cuts = [i for i in (text.find(s) for s in stop_strings(checked)) if i >= 0]
    if cuts:
        stop = min(cuts)
        # vLLM counts the tokens up to the one that completed the stop string
        return Completion(text[:stop], "stop", len(_TOKEN_RE.findall(text[: stop + 1])))
    return Completion(text, reason, len(_TOKEN_RE.findall(text)))


def stream_chunks(text: str, parts: int = 4) -> list[str]:
    """Split text at whitespace-token starts into at most ``parts`` pieces that join back to it."""
    starts = [match.start() for match in _TOKEN_RE.finditer(text)][1:]
    if not starts or parts <= 1:
        return [text]
    cuts = sorted({starts[i * len(starts) // parts] for i in range(1, parts)})
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


@dataclass
class ScriptedModel:
    """One scripted LLM; ``generate`` is deterministic given the sequence of calls."""

    name: str
    strength: int
    garble_first_verdicts: int = 0
    latency_s: float = 0.0
    skill: Skill | None = None  # what its code does (module docstring); None: by strength
    hostile: str | None = None  # answer with hostile code: "<kind>[:<argument>]" or "any"
    garble_first_tests: int = 0  # test-writing replies without a code block, first
    family: str | None = None  # signs its answers ``family=<family>`` (module docstring)
    family_bias: bool = False  # as a judge, votes for its own family's answer
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _mined: int = field(default=0, init=False, repr=False, compare=False)
    _judged: int = field(default=0, init=False, repr=False, compare=False)
    _tested: int = field(default=0, init=False, repr=False, compare=False)
    _hostile: Hostile | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_model_name(self.name)
        if isinstance(self.strength, bool) or not isinstance(self.strength, int):
            raise ValueError(f"strength: expected an integer, got {self.strength!r}")
        if not 1 <= self.strength <= 10:
            raise ValueError(f"strength: must be in 1..10, got {self.strength}")
        garble = self.garble_first_verdicts
        if isinstance(garble, bool) or not isinstance(garble, int) or garble < 0:
            raise ValueError(f"garble_first_verdicts: expected an integer >= 0, got {garble!r}")
        latency = self.latency_s
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            raise ValueError(f"latency_s: expected a number >= 0, got {latency!r}")
        if self.skill is not None and self.skill not in SKILLS:
            raise ValueError(f"skill: expected one of {', '.join(SKILLS)}, got {self.skill!r}")
        if self.hostile is not None and self.hostile != "any":
            if not isinstance(self.hostile, str):
                raise ValueError(f"hostile: expected a string, got {self.hostile!r}")
            try:
                self._hostile = parse_hostile(self.hostile)
            except ValueError as exc:
                raise ValueError(f"hostile: {exc}") from None
        garble = self.garble_first_tests
        if isinstance(garble, bool) or not isinstance(garble, int) or garble < 0:
            raise ValueError(f"garble_first_tests: expected an integer >= 0, got {garble!r}")
        if self.family is not None and (
            not isinstance(self.family, str) or not _FAMILY_RE.fullmatch(f"family={self.family}")
        ):
            raise ValueError(
                f"family: expected lower-case letters, digits, '.', '_' or '-', got {self.family!r}"
            )
        if not isinstance(self.family_bias, bool):
            raise ValueError(f"family_bias: expected true or false, got {self.family_bias!r}")
        if self.family_bias and self.family is None:
            raise ValueError("family_bias: the model needs a `family` to favour")

    def generate(self, prompt: str, params: Mapping[str, Any]) -> str:
        """The raw text this model "generates" for prompt (before ``apply_sampling``)."""
        role = role_of(prompt)
        if role == "judge":
            return self._judge(prompt)
        if role == "miner":
            return self._mine(prompt, params)
        if role == "scorer":
            return self._score(prompt)
        if role == "tester":
            return self._write_tests(prompt)
        return self._answer(prompt)

    def _score(self, prompt: str) -> str:
        vague = "something useful" in prompt
        score = 3 if vague else 8
        reason = "The question is vague." if vague else "The question is clear and specific."
        return f"{reason}\n[[{score}]]"

    def _judge(self, prompt: str) -> str:
        with self._lock:
            garble = self._judged < self.garble_first_verdicts
            self._judged += 1
        answer_a, answer_b = judge_answers(prompt)
        qa, qb = quality_of(answer_a), quality_of(answer_b)
        summary = f"Assistant A's answer rates {qa}/10 and Assistant B's answer rates {qb}/10."
        if garble:
            return f"{summary} Both answers try to address the question; it is hard to say more."
        if self.family_bias:
            own = [family_of(answer_a) == self.family, family_of(answer_b) == self.family]
            if own.count(True) == 1:
                mine = "A" if own[0] else "B"
                return f"{summary} {mine} is written the way I would write it.\n[[{mine}]]"
        if qa == qb:  # the tests may tell them apart
            pa, pb = execution_passed(prompt)
            if pa is not None and pb is not None and pa != pb:
                tests = f"{summary} A passed {pa} tests and B passed {pb}."
                return f"{tests} {'A' if pa > pb else 'B'} is correct more often.\n" + (
                    "[[A]]" if pa > pb else "[[B]]"
                )
        if qa > qb:
            return f"{summary} A is more complete and more accurate.\n[[A]]"
        if qb > qa:
            return f"{summary} B is more complete and more accurate.\n[[B]]"
        return f"{summary} They are equally good.\n[[Tie]]"

    def _mine(self, prompt: str, params: Mapping[str, Any]) -> str:
        with self._lock:
            counter = self._mined
            self._mined += 1
        seed = params.get("seed")
        seed_part = (seed % _SEED_SPACE) * _SEED_SPACE if isinstance(seed, int) else 0
        index = counter + seed_part
        salt = zlib.crc32(self.name.encode()) % 1000
        mix = zlib.crc32(f"{self.name}:{index}".encode())
        subject = _SUBJECTS[mix % len(_SUBJECTS)]
        action = _ACTIONS[(mix // 97) % len(_ACTIONS)]
        constraint = _CONSTRAINTS[(mix // 9973) % len(_CONSTRAINTS)]
        match = _MINING_LANG_RE.search(prompt)
        language = match.group(1) if match else "Python"
        name = f"{action.split()[0]}_{index * 1000 + salt}"
        scenario = " ".join(random.Random(mix).sample(_DOMAIN, 8))
        instruction = (
            f"Write a {language} function `{name}` that {action} {subject} {constraint}; "
            f"context: {scenario}."
        )
        if counter % LOW_QUALITY_EVERY == LOW_QUALITY_EVERY - 1:
            instruction = _VAGUE.format(language=language) + f" (variant {index})"
        stops = stop_strings(params)
        return f"{instruction}{stops[0]}{MINER_JUNK}" if stops else instruction

    def _answer(self, prompt: str) -> str:
        match = _ANSWER_LANG_RE.search(prompt)
        language = match.group(1) if match else "Python"
        idents = _IDENT_RE.findall(prompt)
        ident = idents[-1] if idents else "solve"
        s = self.strength
        if s >= 8:
            intro = "Here is a complete solution that handles empty and duplicate inputs."
            outro = "It runs in O(n log n) and is covered by tests for edge cases.\n"
        elif s >= 4:
            intro, outro = "Here is a solution.", ""
        else:
            intro, outro = "Try this.", ""
        hostile = self._hostile_for(prompt, ident)
        if hostile is not None:
            code = hostile_code(ident, hostile)
        else:
            code = answer_code(ident, self.skill or skill_for(s), level=s)
        fence = language.lower()
        style = "" if self.family is None else f"family={self.family}\n"
        return f"{intro}\n```{fence}\n{code}```\n{outro}{style}quality={s}"

    def _hostile_for(self, prompt: str, ident: str) -> Hostile | None:
        for spec in HOSTILE_MARK_RE.findall(prompt):
            try:
                return parse_hostile(spec)
            except ValueError:
                continue  # not a marker of ours: ignored (module docstring)
        if self.hostile == "any":
            return HOSTILE_KINDS[zlib.crc32(ident.encode()) % len(HOSTILE_KINDS)], None
        return self._hostile

    def _write_tests(self, prompt: str) -> str:
        with self._lock:
            garble = self._tested < self.garble_first_tests
            self._tested += 1
        read = read_writer_prompt(prompt)
        task = read[1] if read is not None else prompt
        idents = _IDENT_RE.findall(task)
        ident = idents[-1] if idents else "solve"
        if garble:
            return f"I would test `{ident}` on empty input, sorted input and duplicates."
        tests = scripted_tests(ident)
        return f"Here are pytest tests for `{ident}`.\n```python\n{tests}```\nRun them with pytest."


def parse_models(doc: Any) -> list[ScriptedModel]:
    """Scripted models from a parsed YAML document ``{models: [{name, strength, ...}, ...]}``."""
    return parse_models_file(doc, ScriptedModel)


def load_models(path: str | Path) -> list[ScriptedModel]:
    """Scripted models from a YAML file (see ``parse_models``)."""
    return load_models_file(path, ScriptedModel)
