"""The code inside scripted answers and tests: one behaviour every scripted challenge asks for,
answers that get it right or wrong, the pytest tests that tell them apart, and hostile code.

Usage::

    tests = scripted_tests("merge_17")            # a pytest module, `from solution import *`
    body = answer_code("merge_17", "partial", level=5)
    evil = hostile_code("merge_17", parse_hostile("socket:127.0.0.1:9"))
    instruction = f"Write a Python function `merge_17`. {hostile_marker('read:/srv/secret')}"

The scripted spec: whatever the instruction says, ``<ident>(data)`` returns the sorted distinct
items of the list ``data``. ``scripted_tests`` checks it with four tests, and each skill passes a
known number of them (``PASSES``): ``correct`` (``sorted(set(data))``) 4 of 4, ``partial``
(``sorted(data)``, keeps duplicates) 3 of 4, ``wrong`` (``data`` unchanged) 2 of 4.

Hostile code (``hostile_code``) acts when the module is imported, i.e. while pytest collects the
tests, so every kind runs once per sandboxed run:

- ``socket[:host:port]`` connects out (default ``1.1.1.1:53``);
- ``write[:path]`` creates a file outside the scratch dir (default
  ``/usr/warriorcoder-escape-write``);
- ``read[:path]`` reads a host file (default ``/etc/hostname``) and reports its first 200
  characters;
- ``fork`` is a fork bomb (every process forks forever);
- ``memory`` allocates and touches 64 MiB blocks until an allocation fails;
- ``output`` writes 64 KiB chunks to stdout and stderr forever;
- ``sleep[:seconds]`` sleeps (default 3600 s);
- ``spin`` burns CPU forever.

``socket``, ``write``, ``read`` and ``memory`` then import fine, and the function raises
``RuntimeError("hostile <kind>: <what happened>")`` in every test, so each test fails with that
report in pytest's output: ``blocked (<the OSError>)`` when the sandbox stopped it, or what got
through (``connected``, ``wrote <path>``, ``read <path>: '<text>'``, ``stopped at <n> MiB``). A
test can therefore check containment both ways: no effect on the host (nothing listening got a
connection, the path does not exist on the host, the host file's text is not in the run's
output) and the report in the run's output. The other kinds never finish on their own: the
sandbox's limits must stop them (timeout, process or memory limit, output cap).
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "HOSTILE_KINDS",
    "PASSES",
    "SKILLS",
    "TESTS_TOTAL",
    "Hostile",
    "Skill",
    "answer_code",
    "hostile_code",
    "hostile_marker",
    "parse_hostile",
    "scripted_tests",
    "skill_for",
]

Skill = Literal["correct", "partial", "wrong"]
SKILLS: tuple[Skill, ...] = ("correct", "partial", "wrong")
HOSTILE_KINDS = ("socket", "write", "read", "fork", "memory", "output", "sleep", "spin")

TESTS_TOTAL = 4
PASSES: dict[Skill, int] = {"correct": 4, "partial": 3, "wrong": 2}  # of scripted_tests

Hostile = tuple[str, str | None]  # (kind, argument)

_DEFAULT_ARGS = {
    "socket": "1.1.1.1:53",
    "write": "/usr/warriorcoder-escape-write",  # outside the scratch dir (/tmp may be in it)
    "read": "/etc/hostname",
    "sleep": "3600",
}
_HOST_PORT_RE = re.compile(r"^(?P<host>[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")

# (input, expected) of scripted_tests, in order; PASSES counts which each skill gets right.
_CASES = (
    ("empty_input_gives_an_empty_list", "[]", "[]"),
    ("sorted_distinct_input_is_unchanged", "[1, 2, 3]", "[1, 2, 3]"),
    ("unsorted_input_comes_back_sorted", "[3, 1, 2]", "[1, 2, 3]"),
    ("duplicates_are_dropped", "[2, 1, 2, 3, 1]", "[1, 2, 3]"),
)


def skill_for(strength: int) -> Skill:
    """A scripted model's default skill: ``correct`` from strength 8, ``partial`` from 4."""
    return "correct" if strength >= 8 else "partial" if strength >= 4 else "wrong"


def scripted_tests(ident: str) -> str:
    """The pytest module a scripted test writer writes for a challenge naming ``ident``."""
    tests = "".join(
        f"\n\ndef test_{name}():\n    assert {ident}({given}) == {expected}\n"
        for name, given, expected in _CASES
    )
    return f"from solution import *\n{tests}"


def answer_code(ident: str, skill: Skill, *, level: int) -> str:
    """The function a scripted answer gives (``level``: the model's strength, in a comment)."""
    if skill == "correct":
        body = f"    # level {level}: validated input, edge cases covered\n"
        body += "    if not data:\n        return []\n    return sorted(set(data))\n"
    elif skill == "partial":
        body = f"    # level {level}: straightforward approach\n    return sorted(data)\n"
    else:
        body = f"    # level {level}: rough sketch, edge cases missing\n    return data\n"
    return f"def {ident}(data):\n{body}"


def parse_hostile(spec: str) -> Hostile:
    """``kind`` or ``kind:argument`` (see the module docstring); ``ValueError`` names what is
    wrong."""
    kind, sep, arg = spec.partition(":")
    if kind not in HOSTILE_KINDS:
        raise ValueError(f"unknown hostile kind {kind!r} (one of {', '.join(HOSTILE_KINDS)})")
    if not sep:
        return kind, None
    if kind not in _DEFAULT_ARGS or not arg:
        raise ValueError(f"hostile kind {kind!r} takes no argument, got {arg!r}")
    if kind == "socket" and not _HOST_PORT_RE.match(arg):
        raise ValueError(f"hostile socket: expected host:port, got {arg!r}")
    if kind == "sleep" and not arg.isdigit():
        raise ValueError(f"hostile sleep: expected whole seconds, got {arg!r}")
    return kind, arg


def hostile_marker(spec: str) -> str:
    """The marker that, in a challenge's instruction, makes the scripted answerers answer with
    hostile code (``spec`` as for ``parse_hostile``, checked here)."""
    parse_hostile(spec)
    return f"[[hostile:{spec}]]"


def hostile_code(ident: str, hostile: Hostile) -> str:
    """A module defining ``ident`` whose import attempts ``hostile`` (see the module docstring)."""
    kind, arg = hostile
    arg = arg or _DEFAULT_ARGS.get(kind, "")
    act = _ACTS[kind](arg)
    return (
        f"import os\nimport socket\nimport sys\nimport time\n\n"
        f'REPORT = "hostile {kind}: not attempted"\n{act}\n\n'
        f"def {ident}(data):\n    raise RuntimeError(REPORT)\n"
    )


def _socket(arg: str) -> str:
    m = _HOST_PORT_RE.match(arg)
    assert m is not None  # parse_hostile checked it
    host, port = m.group("host"), int(m.group("port"))
    return (
        "try:\n"
        f"    with socket.create_connection(({host!r}, {port}), timeout=3):\n"
        f'        REPORT = "hostile socket: connected to {host}:{port}"\n'
        "except OSError as exc:\n"
        '    REPORT = f"hostile socket: blocked ({exc!r})"\n'
    )


def _write(path: str) -> str:
    return (
        "try:\n"
        f"    with open({path!r}, 'w') as f:\n"
        "        f.write('escaped')\n"
        f"    REPORT = 'hostile write: wrote ' + {path!r}\n"
        "except OSError as exc:\n"
        '    REPORT = f"hostile write: blocked ({exc!r})"\n'
    )


def _read(path: str) -> str:
    return (
        "try:\n"
        f"    with open({path!r}) as f:\n"
        f"        REPORT = 'hostile read: read ' + {path!r} + ': ' + repr(f.read(200))\n"
        "except OSError as exc:\n"
        '    REPORT = f"hostile read: blocked ({exc!r})"\n'
    )


def _fork(_: str) -> str:
    return "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"


def _memory(_: str) -> str:
    # bytearray(n) is calloc'ed (pages untouched): touch one byte per page so it is really used
    return (
        "hoard = []\n"
        "try:\n"
        "    while True:\n"
        "        block = bytearray(64 << 20)\n"
        "        block[::4096] = b'x' * (len(block) // 4096)\n"
        "        hoard.append(block)\n"
        "except MemoryError:\n"
        '    REPORT = f"hostile memory: stopped at {len(hoard) * 64} MiB (MemoryError)"\n'
        "hoard.clear()\n"
    )


def _output(_: str) -> str:
    return (
        "chunk = 'x' * 65536\n"
        "while True:\n"
        "    try:\n"
        "        sys.stdout.write(chunk)\n"
        "        sys.stdout.flush()\n"
        "        sys.stderr.write(chunk)\n"
        "    except OSError:\n"
        "        pass\n"
    )


def _sleep(seconds: str) -> str:
    return f"time.sleep({int(seconds)})\n"


def _spin(_: str) -> str:
    return "while True:\n    pass\n"


_ACTS = {
    "socket": _socket,
    "write": _write,
    "read": _read,
    "fork": _fork,
    "memory": _memory,
    "output": _output,
    "sleep": _sleep,
    "spin": _spin,
}
