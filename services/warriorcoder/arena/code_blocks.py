"""The code of a model's answer: its fenced code blocks in the challenge's language, as one module.

Usage::

    code = solution_code(answer_text)                # Python: the blocks to import, or None
    code = solution_code(answer_text, "Rust")        # other languages: the tagged blocks

Which blocks make the module (Python):

* candidates are the blocks fenced with ``` or ~~~ and tagged ``python``/``py``/``python3``/``py3``
  (any extra words after the tag are ignored), plus untagged blocks that parse as Python and
  define or import something (an untagged block of output such as ``6`` is not code);
* a block that reads as a REPL session (its first line starts with ``>>>``) is dropped;
* a block whose every top-level definition is a test (``def test_*``, ``class Test*``) is dropped:
  the answer's own tests are not its solution and would be collected beside the challenge's;
* when some block defines a function or class, blocks that define nothing and call something at
  top level (usage examples: ``print(f(3))``, ``result = solve(data)``, asserts) are dropped: run
  at import they would fail on names from elided context, read stdin or loop, and the challenge's
  tests would then error through no fault of the solution. Blocks of imports and constants are kept;
* when no block defines anything, the answer is a script and every remaining block is kept.

A tagged block that does not parse is kept as it is (its syntax error is the answer's). Kept blocks
are joined in order, so a later definition of the same name (a "final version") wins. An answer
with no fence at all is code only when the whole text parses as Python and defines a function or
class. For other languages the blocks tagged with the language (or a usual alias) are joined as
they are; untagged blocks cannot be checked and are left out. ``None`` when there is no code.
"""

from __future__ import annotations

import ast
import re

__all__ = ["code_blocks", "solution_code"]

_ALIASES = {
    "python": {"python", "py", "python3", "py3"},
    "javascript": {"javascript", "js", "node", "nodejs"},
    "typescript": {"typescript", "ts"},
    "c++": {"c++", "cpp", "cc", "cxx"},
    "c#": {"c#", "csharp", "cs"},
    "go": {"go", "golang"},
    "rust": {"rust", "rs"},
    "shell": {"shell", "bash", "sh"},
    "kotlin": {"kotlin", "kt"},
    "ruby": {"ruby", "rb"},
}

# An opening fence: up to three spaces, three or more backticks or tildes, then the info string.
_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\n]*)$")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block of ``text`` as (tag, body): the tag lower-cased ("" when untagged).

    A block left open at the end of the text (an answer cut at its token limit) runs to the end.
    """
    blocks: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m is None:
            i += 1
            continue
        fence = m.group("fence")
        words = m.group("info").split()
        tag = words[0].lower() if words else ""
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append((tag, "\n".join(body)))
        i += 1
    return blocks


def solution_code(answer_text: str, language: str = "Python") -> str | None:
    """The answer's code as one module (see the module docstring for the rules); None: no code."""
    lang = language.strip().lower()
    tags = _ALIASES.get(lang, {lang})
    blocks = code_blocks(answer_text)
    if lang != "python":
        kept = [body for tag, body in blocks if tag in tags and body.strip()]
        return _join(kept)
    if not blocks:
        tree = _parse(answer_text)
        return answer_text.strip() + "\n" if tree is not None and _defines(tree) else None

    candidates: list[tuple[str, ast.Module | None]] = []
    for tag, body in blocks:
        if not body.strip() or body.lstrip().startswith(">>>"):
            continue
        tree = _parse(body)
        if tag in tags or (tag == "" and tree is not None and (_defines(tree) or _imports(tree))):
            candidates.append((body, tree))
    candidates = [(b, t) for b, t in candidates if t is None or not _only_tests(t)]
    if any(t is None or _defines(t) for _, t in candidates):
        candidates = [(b, t) for b, t in candidates if t is None or not _is_example(t)]
    return _join([body for body, _ in candidates])


def _join(bodies: list[str]) -> str | None:
    bodies = [b.strip("\n") for b in bodies if b.strip()]
    return "\n\n\n".join(bodies) + "\n" if bodies else None


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: NUL bytes in the source
        return None


def _definitions(tree: ast.Module) -> list[ast.stmt]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [s for s in tree.body if isinstance(s, kinds)]


def _is_test(node: ast.stmt) -> bool:
    name = getattr(node, "name", "")
    return name.startswith("test_" if not isinstance(node, ast.ClassDef) else "Test")


def _defines(tree: ast.Module) -> bool:
    return any(not _is_test(d) for d in _definitions(tree))


def _imports(tree: ast.Module) -> bool:
    return any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in tree.body)


def _only_tests(tree: ast.Module) -> bool:
    defs = _definitions(tree)
    return bool(defs) and all(_is_test(d) for d in defs)


def _is_example(tree: ast.Module) -> bool:
    """Defines nothing and does something at top level: a call, an assert, a main guard."""
    if _definitions(tree):
        return False
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(stmt, (ast.Assert, ast.If, ast.For, ast.While, ast.With)):
            return True
        if any(isinstance(n, ast.Call) for n in ast.walk(stmt)):
            return True
    return False
