"""Cleaning mined instructions and the round-robin schedule."""

import pytest

from warriorcoder.arena.instructions import clean, cut_at_stop, normalise
from warriorcoder.arena.schedule import round_robin

STOP = ["<|im_end|>"]


def test_cut_at_first_stop():
    assert cut_at_stop("Write a parser.<|im_end|>\n<|im_start|>assistant\nSure", STOP) == (
        "Write a parser."
    )
    assert cut_at_stop("no stop here", STOP) == "no stop here"
    assert cut_at_stop("a<|eot_id|>b<|im_end|>c", ["<|im_end|>", "<|eot_id|>"]) == "a"


def test_clean_accepts_a_question():
    text, reason = clean(
        "  Write a Python function that merges overlapping intervals.<|im_end|>junk",
        stops=STOP,
        min_chars=20,
        max_chars=200,
    )
    assert reason is None
    assert text == "Write a Python function that merges overlapping intervals."


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("   <|im_end|>", "empty"),
        ("Sort it.", "too_short"),
        ("x" * 201, "too_long"),
        ("Write a function.\n<|im_start|>assistant\nHere you go", "template_debris"),
        ("Explain [INST] tags in Llama prompts, please.", "template_debris"),
        ("### Instruction:\nWrite a function to add numbers", "template_debris"),
        ("<|start_header_id|>user<|end_header_id|>\n\nWrite a sort", "template_debris"),
        ("Write a sort.\n<｜Assistant｜>Sure", "template_debris"),
    ],
)
def test_clean_rejects_with_reason(raw, reason):
    assert clean(raw, stops=["<|im_end|>", "<|eot_id|>"], min_chars=10, max_chars=200)[1] == reason


@pytest.mark.parametrize(
    "raw",
    [
        # A line that is just a word that happens to be a role name is data, not markup.
        "Given these rows:\nuser\nadmin\nguest\nwrite a Python function that counts each role.",
        # Special tokens mentioned in prose are part of the question.
        "How does GPT-2 use the <|endoftext|> token to separate documents during training?",
        "Write a tokenizer that treats <|pad|> and <|endoftext|> as single tokens.",
    ],
)
def test_clean_keeps_legitimate_instructions(raw):
    text, reason = clean(raw, stops=["<|eot_id|>"], min_chars=10, max_chars=400)
    assert reason is None
    assert text == raw


def test_clean_cuts_at_end_of_text_tokens_instead_of_rejecting():
    # Llama-3 instruct sometimes ends with the base EOS <|end_of_text|> rather than <|eot_id|>.
    raw = "Write a Python function that reverses a linked list.<|end_of_text|>garbage"
    assert clean(raw, stops=["<|eot_id|>"], min_chars=10, max_chars=400) == (
        "Write a Python function that reverses a linked list.",
        None,
    )
    raw = "Implement an LRU cache in Python.<｜end▁of▁sentence｜>"
    assert (
        clean(raw, stops=[], min_chars=10, max_chars=400)[0] == "Implement an LRU cache in Python."
    )


def test_normalise_for_exact_dedup():
    assert normalise("  Write   a\nParser ") == normalise("write a parser")
    assert normalise("write a parser.") != normalise("write a parser")


def test_round_robin_every_ordered_pair_once():
    cycle = round_robin(["a", "b", "c"])
    assert sorted(cycle) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]


def test_round_robin_weights_spread_turns():
    cycle = round_robin(["a", "b"], {"a>b": 3})
    assert cycle.count(("a", "b")) == 3
    assert cycle.count(("b", "a")) == 1
    # smooth WRR: weights 3 and 1 give a,a,b-a,a pattern, not b-a last after a block
    assert cycle == [("a", "b"), ("a", "b"), ("b", "a"), ("a", "b")]


def test_round_robin_zero_weight_skips_pair_and_all_zero_fails():
    assert ("b", "a") not in round_robin(["a", "b"], {"b>a": 0})
    with pytest.raises(ValueError):
        round_robin(["a", "b"], {"a>b": 0, "b>a": 0})
