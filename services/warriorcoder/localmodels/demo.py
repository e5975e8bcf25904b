"""Tiny random-weight causal LMs with their own tokenizers and chat templates, built offline.

Usage::

    models = build_demo_models(Path("arena-data/demo-models"), seed=0)
    write_models_file(models, Path("arena-data/hf-models.yaml"))  # for hf_server

or ``python -m warriorcoder.localmodels.demo OUT_DIR [--seed 0] [--models-file FILE]``.

Three models, each a different transformers architecture, chat template and tokenizer, so the
arena runs real transformers inference end to end with nothing downloaded:

- ``demo-qwen``: ``Qwen2ForCausalLM``, ChatML with Qwen2.5's default system turn (preset
  ``qwen2.5``), no BOS, EOS ``<|im_end|>``;
- ``demo-llama``: ``LlamaForCausalLM``, Llama 3 (preset ``llama3``), BOS ``<|begin_of_text|>``,
  EOS ``<|eot_id|>``;
- ``demo-deepseek``: ``Starcoder2ForCausalLM``, DeepSeek-Coder (preset ``deepseek-coder``), BOS
  ``<｜begin▁of▁sentence｜>``, EOS ``<|EOT|>``.

Each tokenizer is a byte-level BPE trained with ``tokenizers`` on a small built-in corpus of coding
text plus the arena's own prompts, with the special tokens its template needs; the Llama and
DeepSeek ones add their BOS when asked to add special tokens, as the real ones do. The template is
the project's preset, saved as ``chat_template`` in ``tokenizer_config.json``, so
``ChatTemplate.from_file(path / "tokenizer_config.json")`` renders exactly as
``ChatTemplate.preset(template)``. Weights are random (hidden size 64, 2 layers, about 0.2-0.3M
parameters, about 1 MB each): the text is gibberish, but every code path (tokenizer, template,
batching, sampling, stop strings, EOS, guided choice) is the real one. A build is deterministic
given the seed (and the torch/tokenizers versions) and idempotent: a model directory whose recorded
spec matches is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Starcoder2Config,
    Starcoder2ForCausalLM,
)
from transformers.utils import logging as hf_logging

from warriorcoder.arena.prompts import (
    JUDGE_SYSTEM_PROMPT,
    REASK_NOTE,
    challenge_system_prompt,
    judge_messages,
    response_system_prompt,
)
from warriorcoder.runtime.templates import ChatTemplate

__all__ = ["DEMO_SPECS", "DemoModel", "DemoSpec", "build_demo_models", "main", "write_models_file"]

BUILDER_VERSION = 1  # bump when a change here changes what gets built
SPEC_FILE = "demo-model.json"


@dataclass(frozen=True)
class DemoSpec:
    """What one demo model is built from."""

    name: str
    architecture: str  # a key of _ARCHITECTURES
    template: str  # a ChatTemplate preset
    split: str  # pre-tokenizer: a key of _SPLIT_REGEXES, or "bytelevel" (GPT-2's)
    specials: tuple[str, ...]  # special tokens, ids 0.. in this order
    bos: str | None
    eos: str
    pad: str
    extra_eos: tuple[str, ...]  # more EOS ids for generation_config.json
    vocab_size: int  # BPE target (the trained vocabulary may be smaller)
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 192
    context: int = 8192


@dataclass(frozen=True)
class DemoModel:
    """A built demo model: its served name, directory and chat-template preset."""

    name: str
    path: Path
    template: str
    parameters: int
    size_bytes: int

    @property
    def tokenizer_config(self) -> Path:
        return self.path / "tokenizer_config.json"


DEMO_SPECS: tuple[DemoSpec, ...] = (
    DemoSpec(
        name="demo-qwen",
        architecture="qwen2",
        template="qwen2.5",
        split="qwen2",
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra_eos=("<|endoftext|>",),
        vocab_size=1024,
    ),
    DemoSpec(
        name="demo-llama",
        architecture="llama",
        template="llama3",
        split="llama3",
        specials=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
        extra_eos=("<|end_of_text|>",),
        vocab_size=1280,
        intermediate=256,
    ),
    DemoSpec(
        name="demo-deepseek",
        architecture="starcoder2",
        template="deepseek-coder",
        split="bytelevel",
        specials=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|EOT|>"),
        bos="<｜begin▁of▁sentence｜>",
        eos="<|EOT|>",
        pad="<｜end▁of▁sentence｜>",
        extra_eos=("<｜end▁of▁sentence｜>",),
        vocab_size=896,
        intermediate=256,
        context=4096,
    ),
)

_CODE = r'''
def merge_intervals(intervals):
    """Merge overlapping closed intervals and return them sorted by start."""
    result = []
    for start, end in sorted(intervals):
        if result and start <= result[-1][1]:
            result[-1][1] = max(result[-1][1], end)
        else:
            result.append([start, end])
    return result


def top_k_words(text: str, k: int) -> list[str]:
    counts: dict[str, int] = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], w))[:k]


class LRUCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: dict[int, int] = {}

    def get(self, key: int) -> int:
        if key not in self.items:
            return -1
        value = self.items.pop(key)
        self.items[key] = value
        return value

    def put(self, key: int, value: int) -> None:
        self.items.pop(key, None)
        self.items[key] = value
        if len(self.items) > self.capacity:
            del self.items[next(iter(self.items))]


def test_merge_intervals():
    assert merge_intervals([[1, 3], [2, 6], [8, 10]]) == [[1, 6], [8, 10]]
    assert merge_intervals([]) == []


import heapq

def dijkstra(graph, source):
    dist = {source: 0}
    queue = [(0, source)]
    while queue:
        d, node = heapq.heappop(queue)
        if d > dist.get(node, float("inf")):
            continue
        for neighbour, weight in graph[node]:
            nd = d + weight
            if nd < dist.get(neighbour, float("inf")):
                dist[neighbour] = nd
                heapq.heappush(queue, (nd, neighbour))
    return dist

function debounce(fn, wait) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), wait);
  };
}

const groupBy = (items, key) =>
  items.reduce((acc, item) => {
    (acc[item[key]] ||= []).push(item);
    return acc;
  }, {});

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = if ca == *cb { 0 } else { 1 };
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

func reverse(s []int) {
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
}

SELECT user_id, COUNT(*) AS orders
FROM orders
WHERE created_at >= '2024-01-01'
GROUP BY user_id
HAVING COUNT(*) > 3
ORDER BY orders DESC;

#include <vector>
int binary_search(const std::vector<int>& xs, int target) {
    int lo = 0, hi = static_cast<int>(xs.size()) - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (xs[mid] == target) return mid;
        if (xs[mid] < target) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}
'''

_PROSE = (
    "Write a Python function that checks whether a string of brackets is balanced.",
    "Implement a thread-safe queue in Java with a bounded capacity.",
    "Explain the difference between a list and a tuple, with examples.",
    "Here is a solution. It runs in O(n log n) time and O(n) extra space.",
    "First, sort the intervals by their start. Then walk through them and merge overlaps.",
    "The function returns the merged intervals; the tests below cover empty input.",
    "Edge cases: an empty list, a single element, duplicates and negative numbers.",
    "Assistant A's answer is more complete and handles the edge cases correctly.",
    "Assistant B's answer is shorter but misses the empty input case.",
    "Both answers are equally good, so the verdict is a tie.",
    "Verdict: [[A]]",
    "Verdict: [[B]]",
    "Verdict: [[Tie]]",
)


# The pre-tokenizer split patterns of the real tokenizers (transformers rebuilds a Qwen2 tokenizer
# with Qwen's pattern whatever tokenizer.json says, so the demo one must be trained with it).
_SPLIT_REGEXES = {
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "llama3": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}
_PROBE = "Hello  world\n\n  def f(x):\n\treturn x # ünïcødé 日本語 123456 <|im_end|>  [[A]]"


def corpus() -> list[str]:
    """The built-in training text of the demo tokenizers."""
    texts = [_CODE, *_PROSE, JUDGE_SYSTEM_PROMPT, REASK_NOTE]
    for language in ("Python", "JavaScript", "Rust", "Go", "C++", "SQL", "Java"):
        texts += [challenge_system_prompt(language), response_system_prompt(language)]
    texts += [m["content"] for m in judge_messages(_PROSE[0], _PROSE[3], _PROSE[5])]
    for preset in ("qwen2.5", "llama3", "deepseek-coder"):  # template markup
        texts.append(ChatTemplate.preset(preset).conversation(_PROSE[2], _PROSE[0]) + _PROSE[3])
    return texts


def _pre_tokenizer(split: str) -> pre_tokenizers.PreTokenizer:
    if split == "bytelevel":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEXES[split]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _train_tokenizer(spec: DemoSpec) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    if spec.split == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer(spec.split)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    if spec.bos is not None:  # the real Llama 3 / DeepSeek tokenizers prepend their BOS
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A",
            pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, bos_id)],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        model_max_length=spec.context,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = ChatTemplate.preset(spec.template).source
    return fast


def _model(spec: DemoSpec, vocab: int, token_ids: dict[str, int | None]) -> Any:
    common: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": spec.context,
        "tie_word_embeddings": True,
        **token_ids,
    }
    if spec.architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    if spec.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if spec.architecture == "starcoder2":
        return Starcoder2ForCausalLM(Starcoder2Config(**common, use_bias=True))
    raise ValueError(f"unknown demo architecture {spec.architecture!r}")


def _fingerprint(spec: DemoSpec, seed: int) -> str:
    doc = {
        "builder": BUILDER_VERSION,
        "seed": seed,
        "spec": {k: v for k, v in spec.__dict__.items()},
        "corpus": hashlib.sha256("\x00".join(corpus()).encode()).hexdigest(),
        "template": ChatTemplate.preset(spec.template).source,
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _reuse(path: Path, spec: DemoSpec, fingerprint: str) -> DemoModel | None:
    try:
        recorded = json.loads((path / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("fingerprint") != fingerprint:
        return None
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    if not all((path / f).is_file() for f in needed):
        return None
    return DemoModel(spec.name, path, spec.template, int(recorded["parameters"]), _size(path))


def _build_one(spec: DemoSpec, path: Path, seed: int, fingerprint: str) -> DemoModel:
    tokenizer = _train_tokenizer(spec)
    vocab = tokenizer.get_vocab()
    ids = {t: vocab[t] for t in spec.specials}
    token_ids: dict[str, int | None] = {
        "bos_token_id": ids[spec.bos] if spec.bos else None,
        "eos_token_id": ids[spec.eos],
        "pad_token_id": ids[spec.pad],
    }
    torch.manual_seed(seed * 1_000_003 + zlib.crc32(spec.name.encode()))
    model = _model(spec, len(tokenizer), token_ids)
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids["bos_token_id"],
        eos_token_id=[ids[spec.eos], *(ids[t] for t in spec.extra_eos)],
        pad_token_id=ids[spec.pad],
    )
    parameters = sum(p.numel() for p in model.parameters())
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp, save_jinja_files=False)  # chat_template in the config
    config_path = tmp / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # loadable by transformers 4.x too
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")
    loaded = AutoTokenizer.from_pretrained(tmp)
    probe = _PROBE + "".join(spec.specials)
    if (
        loaded(probe, add_special_tokens=False)["input_ids"]
        != tokenizer(probe, add_special_tokens=False)["input_ids"]
    ):
        raise RuntimeError(f"{spec.name}: AutoTokenizer does not load the tokenizer as trained")
    record = {"fingerprint": fingerprint, "seed": seed, "parameters": parameters, **spec.__dict__}
    (tmp / SPEC_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", "utf-8")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return DemoModel(spec.name, path, spec.template, parameters, _size(path))


def build_demo_models(
    out_dir: Path, *, seed: int = 0, specs: Sequence[DemoSpec] = DEMO_SPECS
) -> list[DemoModel]:
    """Build (or reuse) the demo models under ``out_dir/<name>``."""
    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    built: list[DemoModel] = []
    for spec in specs:
        path = out_dir / spec.name
        fingerprint = _fingerprint(spec, seed)
        model = _reuse(path, spec, fingerprint) or _build_one(spec, path, seed, fingerprint)
        built.append(model)
    return built


def write_models_file(
    models: Sequence[DemoModel],
    path: Path,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    max_batch_size: int = 8,
) -> Path:
    """Write the ``warriorcoder.localmodels.hf_server`` models YAML serving ``models``."""
    doc = {
        "models": [
            {
                "name": m.name,
                "path": str(m.path),
                "device": device,
                "dtype": dtype,
                "max_batch_size": max_batch_size,
            }
            for m in models
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the tiny random-weight demo models.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models-file", type=Path, default=None, help="also write hf_server YAML")
    args = parser.parse_args(argv)
    built = build_demo_models(args.out_dir, seed=args.seed)
    for m in built:
        print(f"{m.name}\t{m.template}\t{m.parameters} params\t{m.size_bytes} bytes\t{m.path}")
    if args.models_file is not None:
        write_models_file(built, args.models_file)
        print(f"models file: {args.models_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
