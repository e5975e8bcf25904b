"""Extracting an answer's code: hand-written answers, the expected module written out by hand."""

from __future__ import annotations

from warriorcoder.arena.code_blocks import code_blocks, solution_code


def test_one_python_block():
    answer = "Here you go:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nDone."
    assert solution_code(answer) == "def add(a, b):\n    return a + b\n"


def test_py_and_python3_tags_and_info_words():
    answer = (
        "```py\nimport math\n```\n"
        "```Python3 title=solution.py\ndef root(x):\n    return math.sqrt(x)\n```\n"
    )
    assert solution_code(answer) == "import math\n\n\ndef root(x):\n    return math.sqrt(x)\n"


def test_several_blocks_are_joined_in_order_and_a_later_version_wins():
    answer = (
        "First try:\n```python\ndef f(x):\n    return x\n```\n"
        "Helper:\n```python\nLIMIT = 10\n```\n"
        "Final version:\n```python\ndef f(x):\n    return min(x, LIMIT)\n```\n"
    )
    expected = "def f(x):\n    return x\n\n\nLIMIT = 10\n\n\ndef f(x):\n    return min(x, LIMIT)\n"
    assert solution_code(answer) == expected


def test_usage_examples_and_the_answers_own_tests_are_dropped():
    answer = (
        "```python\ndef double(x):\n    return 2 * x\n```\n"
        "Example:\n```python\nprint(double(3))  # 6\n```\n"
        "Output:\n```\n6\n```\n"
        "Tests:\n```python\nimport pytest\n\ndef test_double():\n    assert double(2) == 4\n```\n"
        "REPL:\n```python\n>>> double(4)\n8\n```\n"
    )
    assert solution_code(answer) == "def double(x):\n    return 2 * x\n"


def test_untagged_block_counts_only_when_it_is_python_code():
    answer = "```\ndef g():\n    return 1\n```\n```\n$ pip install thing\n```\n```\n42\n```\n"
    assert solution_code(answer) == "def g():\n    return 1\n"


def test_a_script_without_definitions_is_kept_whole():
    answer = "```python\nimport sys\nn = int(sys.stdin.readline())\nprint(n * 2)\n```"
    assert solution_code(answer) == "import sys\nn = int(sys.stdin.readline())\nprint(n * 2)\n"


def test_tagged_block_with_a_syntax_error_is_kept():
    answer = "```python\ndef broken(:\n    pass\n```\n```python\nprint(broken())\n```"
    assert solution_code(answer) == "def broken(:\n    pass\n"


def test_other_languages_take_their_tagged_blocks():
    answer = (
        "```rust\nfn main() {}\n```\n```python\ndef f(): pass\n```\n```rs\nfn g() {}\n```\n"
        "```\nfn untagged() {}\n```"
    )
    assert solution_code(answer, "Rust") == "fn main() {}\n\n\nfn g() {}\n"
    assert solution_code(answer, "Go") is None
    assert solution_code("```cpp\nint x;\n```", "C++") == "int x;\n"


def test_no_code():
    assert solution_code("I cannot help with that.") is None
    assert solution_code("Use a hash map, then sort the keys.") is None
    assert solution_code("```\n$ ls\n```") is None
    assert solution_code("```python\n\n```") is None
    # only the answer's own tests: no solution
    assert solution_code("```python\ndef test_x():\n    assert True\n```") is None


def test_unfenced_code_counts_only_when_it_defines_something():
    assert solution_code("def h(n):\n    return n + 1\n") == "def h(n):\n    return n + 1\n"
    assert solution_code("sorted") is None


def test_code_blocks_tildes_longer_fences_and_a_block_cut_off():
    text = "~~~python\na = 1\n~~~\n````\n```\nnested\n```\n````\n```py\ncut = True"
    assert code_blocks(text) == [
        ("python", "a = 1"),
        ("", "```\nnested\n```"),
        ("py", "cut = True"),
    ]
