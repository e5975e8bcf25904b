"""Batched text generation and constrained choice with a Hugging Face causal LM (torch).

Usage::

    engine = HFEngine.load("qwen", "Qwen/Qwen2.5-0.5B-Instruct", device="auto", dtype="auto")
    [completions] = engine.run_batch([Job(prompt, {"max_tokens": 32, "stop": ["<|im_end|>"]})])
    text, reason, tokens = completions[0].text, completions[0].finish_reason, completions[0].tokens

The blocking half of ``warriorcoder.localmodels.hf_server`` (an ``Engine`` of
``warriorcoder.localmodels.jobs``): one ``run_batch`` call takes the requests the server collected
for one model and serves them with one ``model.generate`` call (prompts left-padded) plus, for
guided choice requests, one forward pass that scores every choice. Prompts are raw text, never
templated here, and tokenized as vLLM tokenizes a text prompt: *with* special tokens, so a
tokenizer that adds a BOS (Llama 3, DeepSeek) adds it here too, and a client that sends a rendered
template's own BOS as well gets two, as it would from vLLM (``warriorcoder.runtime.roster`` sends
prompts without it).
Sampling follows vLLM's ``SamplingParams`` row by row, so requests with different parameters share
a batch: repetition penalty (prompt and output tokens), presence and frequency penalties (output
tokens), then temperature (0 is greedy), top_k, top_p and min_p. Each row samples with its own
``torch.Generator`` (seeded from ``seed``, ``seed + i`` for the i-th of ``n`` samples, else at
random), so a seeded request gives the same text whatever it is batched with (up to floating-point
differences of batched kernels). A row stops at the tokenizer's or generation config's EOS (unless
``ignore_eos``), at ``max_tokens`` (default 16, as vLLM) or once one of its ``stop`` strings
appears in the raw decoded text (special tokens included, so ``<|im_end|>`` stops even when it is
not an EOS); the text is then cut before the first stop string (exclusive) and decoded with
``skip_special_tokens`` (default true). Each sample reports vLLM's finish reason (``stop`` for EOS
or a stop string, ``length`` for ``max_tokens`` or the context) and its token count (the tokens
generated, the EOS or the stop string's tokens included, as vLLM's ``output.token_ids``). Token
ids beyond the tokenizer's vocabulary (padded embedding rows) are never sampled. Generation is
capped by the context length: a prompt that does not fit is an error, and a batch generates at
most ``context - longest prompt`` tokens.

Guided choice returns the choice whose tokens (tokenized alone, appended to the prompt's tokens)
have the highest total log-likelihood after the prompt; the first wins a tie. Sampling parameters
other than ``n`` and ``skip_special_tokens`` do not apply to it.
"""

from __future__ import annotations

import inspect
import logging
import math
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.utils import logging as hf_logging

from warriorcoder.localmodels.jobs import Completion, Job, Outcome, ShuttingDown
from warriorcoder.runtime.vllm import DEFAULT_MAX_TOKENS

__all__ = ["DEFAULT_MAX_TOKENS", "BatchStats", "HFEngine", "cut_at_stop", "resolve_device"]

LOGGER = logging.getLogger("warriorcoder.localmodels.hf_engine")

_GREEDY_EPS = 1e-5  # vLLM treats a temperature below this as greedy
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BatchStats:
    """What one ``run_batch`` call did (the server logs it)."""

    requests: int = 0
    generate_rows: int = 0
    choice_rows: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device: expected cpu, cuda, cuda:N or auto, got {device!r}")
    return torch.device(device)


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on the CPU, bfloat16 (float16 without bf16 support) on a GPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"dtype: expected one of auto, {', '.join(_DTYPES)}, got {dtype!r}"
        ) from None


def _ids(value: Any) -> set[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return {value}
    if isinstance(value, list | tuple):
        return {v for v in value if isinstance(v, int) and not isinstance(v, bool)}
    return set()


@dataclass
class _Row:
    """One sequence of a generate batch (a request with ``n`` samples has ``n`` rows)."""

    job: int
    prompt_len: int
    limit: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    ignore_eos: bool
    stops: list[str]
    generator: torch.Generator
    kept: int | None = None  # generated tokens kept once the row is done
    generated: int = 0  # tokens generated once done (the EOS included)
    reason: str = "length"  # vLLM's finish reason once done


class _RowSampler(LogitsProcessor):
    """Samples each row with its own parameters and generator; returns one-hot scores.

    ``generate`` runs greedy (argmax) over the returned scores, so it picks exactly the token
    sampled here. Finished rows are skipped (``generate`` replaces their token by padding).
    """

    def __init__(self, rows: list[_Row], width: int, vocab: int) -> None:
        self.rows = rows
        self.width = width  # padded prompt width: generated tokens start here
        self.vocab = vocab

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, -math.inf)
        for i, row in enumerate(self.rows):
            if row.kept is not None:
                out[i, 0] = 0.0
                continue
            out[i, self._sample(row, input_ids[i], scores[i])] = 0.0
        return out  # type: ignore[return-value]

    def _sample(self, row: _Row, ids: torch.Tensor, raw: torch.Tensor) -> int:
        logits = raw.clone()
        if self.vocab < logits.shape[-1]:
            logits[self.vocab :] = -math.inf
        if row.repetition_penalty != 1.0:
            seen = torch.unique(ids[self.width - row.prompt_len :])
            picked = logits[seen]
            logits[seen] = torch.where(
                picked > 0, picked / row.repetition_penalty, picked * row.repetition_penalty
            )
        if row.presence_penalty or row.frequency_penalty:
            counts = torch.bincount(ids[self.width :], minlength=logits.shape[-1])[
                : logits.shape[-1]
            ].to(logits.dtype)
            logits -= row.frequency_penalty * counts + row.presence_penalty * (counts > 0)
        if row.temperature < _GREEDY_EPS:
            return int(torch.argmax(logits))
        logits = logits / row.temperature
        if row.top_k > 0 and row.top_k < logits.shape[-1]:
            kth = torch.topk(logits, row.top_k).values[-1]
            logits[logits < kth] = -math.inf
        probs = torch.softmax(logits, dim=-1)
        if row.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= row.top_p
            drop[0] = False
            probs[order[drop]] = 0.0
        if row.min_p > 0.0:
            probs[probs < row.min_p * probs.max()] = 0.0
        return int(torch.multinomial(probs, 1, generator=row.generator))


class _RowStopper(StoppingCriteria):
    """Per-row stop: EOS, ``max_tokens`` (and the context limit), stop strings.

    Having an ``eos_token_id`` attribute makes ``generate`` pad finished rows; the EOS ids
    themselves are checked here so that ``ignore_eos`` works per row.
    """

    def __init__(
        self,
        rows: list[_Row],
        width: int,
        tokenizer: Any,
        eos: set[int],
        pad: int,
        abort: threading.Event,
    ) -> None:
        self.rows = rows
        self.abort = abort
        self.width = width
        self.tokenizer = tokenizer
        self.eos = eos
        self.eos_token_id = pad
        # A stop string of c characters lies within the last 4c+8 tokens (a token is >= 1 byte).
        longest = max((len(s) for r in rows for s in r.stops), default=0)
        self.window = 4 * longest + 8

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        steps = input_ids.shape[1] - self.width
        aborted = self.abort.is_set()
        done = []
        for i, row in enumerate(self.rows):
            if row.kept is None and not aborted:
                self._check(row, input_ids[i, self.width :], steps)
            done.append(aborted or row.kept is not None)
        is_done = torch.tensor(done, dtype=torch.bool, device=input_ids.device)
        return is_done  # type: ignore[return-value]

    def _check(self, row: _Row, generated: torch.Tensor, steps: int) -> None:
        last = int(generated[steps - 1])
        row.generated = steps
        if not row.ignore_eos and last in self.eos:
            row.kept, row.reason = steps - 1, "stop"
            return
        if row.stops:
            tail = generated[max(0, steps - self.window) : steps].tolist()
            text = self.tokenizer.decode(tail, skip_special_tokens=False)
            if any(s in text for s in row.stops):
                row.kept, row.reason = steps, "stop"
                return
        if steps >= row.limit:
            row.kept = steps  # reason stays "length"


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """Text before the first occurrence of any stop string (the stop string excluded)."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text


class HFEngine:
    """A loaded causal LM and its tokenizer; ``run_batch`` is blocking and not re-entrant."""

    def __init__(self, name: str, model: Any, tokenizer: Any, device: torch.device) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        config = model.generation_config
        self.eos = _ids(getattr(config, "eos_token_id", None)) | _ids(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(config, "pad_token_id", None)
        if not isinstance(pad, int):
            pad = min(self.eos) if self.eos else 0
        self.pad = pad
        # Sampling defaults shipped with a checkpoint (Qwen's top_k 20, repetition_penalty 1.05,
        # ...) must not leak into requests: each request's parameters are all that apply.
        model.generation_config = GenerationConfig(pad_token_id=pad)
        self.vocab = len(tokenizer)
        context = getattr(model.config, "max_position_embeddings", None)
        self.context: int | None = context if isinstance(context, int) and context > 0 else None
        forward = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in forward
        self._abort = threading.Event()
        self.last_stats = BatchStats()

    @classmethod
    def load(cls, name: str, path: str, *, device: str = "auto", dtype: str = "auto") -> HFEngine:
        """Load a local directory or hub id with ``AutoModelForCausalLM``/``AutoTokenizer``."""
        hf_logging.disable_progress_bar()
        dev = resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, dev)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        model.to(dev)
        model.eval()
        return cls(name, model, tokenizer, dev)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def abort(self) -> None:
        """Stop a running batch at its next token and refuse new ones (on shutdown); thread-safe."""
        self._abort.set()

    # ------------------------------------------------------------------ batches

    def run_batch(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Serve jobs together: one ``generate`` call and one scoring forward pass at most.

        Raises ``ShuttingDown`` (for the whole batch) once ``abort`` was called.
        """
        if self._abort.is_set():
            raise ShuttingDown("the server is shutting down")
        start = time.monotonic()
        stats = BatchStats(requests=len(jobs))
        outcomes: list[Outcome | None] = [None] * len(jobs)
        prompts: list[list[int] | None] = []
        for i, job in enumerate(jobs):
            try:
                prompts.append(self._encode_prompt(job))
            except ValueError as exc:
                outcomes[i] = exc
                prompts.append(None)
        gen = [i for i, job in enumerate(jobs) if prompts[i] is not None and job.choices is None]
        choose = [i for i, job in enumerate(jobs) if prompts[i] is not None and job.choices]
        with torch.inference_mode():
            if gen:
                texts, stats.new_tokens = self._generate(
                    [jobs[i] for i in gen], [prompts[i] or [] for i in gen]
                )
                for i, out in zip(gen, texts, strict=True):
                    outcomes[i] = out
                stats.generate_rows = sum(_n(jobs[i].params) for i in gen)
            if choose:
                picks = self._choose([jobs[i] for i in choose], [prompts[i] or [] for i in choose])
                for i, pick in zip(choose, picks, strict=True):
                    outcomes[i] = pick
                stats.choice_rows = sum(len(jobs[i].choices or ()) for i in choose)
        if self._abort.is_set():  # texts cut short by the abort are not answers
            raise ShuttingDown("the server is shutting down")
        stats.seconds = time.monotonic() - start
        self.last_stats = stats
        LOGGER.info(
            "%s: batch of %d requests: %d generate rows (%d new tokens), %d choice rows, %.3f s",
            self.name,
            stats.requests,
            stats.generate_rows,
            stats.new_tokens,
            stats.choice_rows,
            stats.seconds,
        )
        return [o if o is not None else ValueError("internal: no outcome") for o in outcomes]

    def _encode_prompt(self, job: Job) -> list[int]:
        # As vLLM tokenizes a text prompt: with the tokenizer's special tokens (its BOS).
        ids: list[int] = self.tokenizer(job.prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise ValueError("text_input: the prompt is empty; it must be at least one token")
        extra = 1 if job.choices is None else max(len(self._encode_choice(c)) for c in job.choices)
        if self.context is not None and len(ids) + extra > self.context:
            raise ValueError(
                f"text_input: the prompt has {len(ids)} tokens; prompt plus output must be at most "
                f"the model's maximum context length of {self.context} tokens"
            )
        return ids

    def _encode_choice(self, choice: str) -> list[int]:
        ids: list[int] = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
        return ids

    # --------------------------------------------------------------- generation

    def _rows(self, jobs: Sequence[Job], prompts: Sequence[list[int]]) -> list[_Row]:
        rows: list[_Row] = []
        for j, (job, ids) in enumerate(zip(jobs, prompts, strict=True)):
            p = job.params
            seed = p.get("seed")
            top_k = int(p.get("top_k", 0))
            for k in range(_n(p)):
                gen = torch.Generator(device=self.device)
                gen.manual_seed(seed + k if isinstance(seed, int) else secrets.randbits(63))
                limit = int(p.get("max_tokens", DEFAULT_MAX_TOKENS))
                if self.context is not None:
                    limit = min(limit, self.context - len(ids))
                stop = p.get("stop")
                rows.append(
                    _Row(
                        job=j,
                        prompt_len=len(ids),
                        limit=limit,
                        temperature=float(p.get("temperature", 1.0)),
                        top_k=top_k if top_k > 0 else 0,
                        top_p=float(p.get("top_p", 1.0)),
                        min_p=float(p.get("min_p", 0.0)),
                        repetition_penalty=float(p.get("repetition_penalty", 1.0)),
                        presence_penalty=float(p.get("presence_penalty", 0.0)),
                        frequency_penalty=float(p.get("frequency_penalty", 0.0)),
                        ignore_eos=bool(p.get("ignore_eos", False)),
                        stops=[stop] if isinstance(stop, str) else list(stop or []),
                        generator=gen,
                    )
                )
        return rows

    def _generate(
        self, jobs: Sequence[Job], prompts: Sequence[list[int]]
    ) -> tuple[list[Outcome], int]:
        """Each job's texts, and the number of tokens generated in all."""
        rows = self._rows(jobs, prompts)
        width = max(r.prompt_len for r in rows)
        input_ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = prompts[row.job]
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1
        max_new = max(r.limit for r in rows)
        if self.context is not None:
            max_new = min(max_new, self.context - width)
        config = GenerationConfig(
            do_sample=False, max_new_tokens=max(1, max_new), pad_token_id=self.pad
        )
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            logits_processor=LogitsProcessorList([_RowSampler(rows, width, self.vocab)]),
            stopping_criteria=StoppingCriteriaList(
                [_RowStopper(rows, width, self.tokenizer, self.eos, self.pad, self._abort)]
            ),
        )
        generated = out[:, width:].cpu()
        results: list[list[Completion]] = [[] for _ in jobs]
        new_tokens = 0
        for i, row in enumerate(rows):
            if row.kept is None:  # generate's own max_new_tokens (the context) ended it
                row.kept = row.generated = min(generated.shape[1], row.limit)
            new_tokens += row.kept
            skip = bool(jobs[row.job].params.get("skip_special_tokens", True))
            ids = generated[i, : row.kept].tolist()
            text = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=skip), row.stops)
            results[row.job].append(Completion(text, row.reason, row.generated))
        return list(results), new_tokens

    # ----------------------------------------------------------- guided choice

    def _choose(self, jobs: Sequence[Job], prompts: Sequence[list[int]]) -> list[Outcome]:
        seqs: list[list[int]] = []
        lengths: list[int] = []
        for job, ids in zip(jobs, prompts, strict=True):
            for choice in job.choices or ():
                tokens = self._encode_choice(choice)
                seqs.append(ids + tokens)
                lengths.append(len(tokens))
        width = max(len(s) for s in seqs)
        keep = max(lengths) + 1
        input_ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            input_ids[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if self._logits_to_keep else {}
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=False,
            **kwargs,
        ).logits[:, -keep:, :]
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        scores: list[float] = []
        for i, n in enumerate(lengths):
            targets = input_ids[i, width - n :]
            # logits at kept index t predict the token at kept index t + 1
            picked = logprobs[i, keep - n - 1 : keep - 1].gather(-1, targets[:, None])
            scores.append(float(picked.sum()))
        results: list[Outcome] = []
        at = 0
        for job in jobs:
            choices = job.choices or ()
            mine = scores[at : at + len(choices)]
            at += len(choices)
            best = mine.index(max(mine))  # the first of equally likely choices
            size = len(self._encode_choice(choices[best]))
            results.append([Completion(choices[best], "stop", size)] * _n(job.params))
        return results


def _n(params: Mapping[str, Any]) -> int:
    return int(params.get("n", 1))
