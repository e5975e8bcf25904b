"""The package's shape: what setuptools installs, what each layer may import, and that every
module's public names and ``Usage::`` examples are true.

The usage examples are checked against the real code without running servers: every Python
example must parse; each call of a name the example can resolve (a module-level function or class,
or a method of an object the example built from a known class) must bind to the real signature;
attributes read from a module or class must exist; ``from … import …`` lines must import; shell
examples must name a real ``warriorcoder`` subcommand with options its parser accepts, or a module
that ``python -m`` can run.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import shlex
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import warriorcoder

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = {"services": ROOT / "services", "proto": ROOT / "proto"}

# Modules that need an optional extra (torch, transformers, pytriton) to import.
_OPTIONAL = ("warriorcoder.localmodels.hf_engine", "warriorcoder.localmodels.demo")


def _source_packages() -> set[str]:
    found = set()
    for root in SOURCE_ROOTS.values():
        for init in (root / "warriorcoder").rglob("*.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join(rel.parts))
    return found


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(warriorcoder.__path__, "warriorcoder."):
        names.append(info.name)
    return sorted(names)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # an optional extra missing on this machine
        if name.startswith(_OPTIONAL):
            pytest.skip(f"{name}: {exc}")
        raise


# -- packaging ------------------------------------------------------------------------------------


def test_pyproject_lists_every_package_on_disk():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _source_packages()
    for package in config["packages"]:
        top = "warriorcoder.proto" if package.startswith("warriorcoder.proto") else ""
        base = config["package-dir"][top]
        path = ROOT / base / Path(*package.split(".")[len(top.split(".")) if top else 0 :])
        assert path.is_dir(), f"{package}: {path} does not exist"


def test_no_generic_top_level_names():
    """Only `warriorcoder` is importable from the source roots: no `proto`, no `services`."""
    for root in SOURCE_ROOTS.values():
        tops = {
            p.name
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith((".", "_")) and not p.name.endswith(".egg-info")
        }
        assert tops == {"warriorcoder"}, f"{root}: {tops}"
        assert not (root / "warriorcoder" / "__init__.py").exists()  # a namespace over two roots
    assert importlib.util.find_spec("proto") is None or "proto" not in {
        m.name for m in pkgutil.iter_modules([str(r) for r in SOURCE_ROOTS.values()])
    }


# -- layering -------------------------------------------------------------------------------------

_IO_MODULES = (
    "nats",
    "tritonclient",
    "grpc",
    "aiohttp",
    "pytriton",
    "torch",
    "transformers",
    "subprocess",
    "socket",
    "asyncio",
    "warriorcoder.runtime",
    "warriorcoder.stages",
    "warriorcoder.launcher",
    "warriorcoder.localmodels",
    "warriorcoder.testing",
    "warriorcoder.data",
)


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _files(package: str) -> list[Path]:
    rel = Path(*package.split("."))
    root = (
        SOURCE_ROOTS["proto"]
        if package.startswith("warriorcoder.proto")
        else SOURCE_ROOTS["services"]
    )
    base = root / rel
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def _offending(files: list[Path], banned: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files:
        for name in _imports_of(path):
            if any(name == b or name.startswith(b + ".") for b in banned):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_pure_logic_imports_no_io():
    # The config schema is allowed: the scoring constants are typed settings, not I/O.
    banned = (
        *(m for m in _IO_MODULES if m != "warriorcoder.runtime"),
        "warriorcoder.runtime.bus",
        "warriorcoder.runtime.triton",
        "warriorcoder.runtime.kv",
        "warriorcoder.runtime.http",
        "warriorcoder.runtime.service",
    )
    bad = _offending(_files("warriorcoder.arena"), banned)
    runtime = [
        n
        for p in _files("warriorcoder.arena")
        for n in _imports_of(p)
        if n.startswith("warriorcoder.runtime") and n != "warriorcoder.runtime.settings"
    ]
    assert bad + runtime == []


def test_the_contract_imports_only_itself():
    banned = (
        *(m for m in _IO_MODULES if m.startswith("warriorcoder")),
        "nats",
        "tritonclient",
        "aiohttp",
        "warriorcoder.arena",
    )
    assert _offending(_files("warriorcoder.proto"), banned) == []


def test_errors_module_imports_nothing_of_the_project():
    assert _offending(_files("warriorcoder.errors"), ("warriorcoder",)) == []


def test_stages_do_not_import_each_other():
    stages_dir = SOURCE_ROOTS["services"] / "warriorcoder" / "stages"
    stages = sorted(p.name for p in stages_dir.iterdir() if (p / "__init__.py").exists())
    assert len(stages) >= 4
    bad = []
    for stage in stages:
        others = tuple(f"warriorcoder.stages.{s}" for s in stages if s != stage)
        bad += _offending(_files(f"warriorcoder.stages.{stage}"), others)
    assert bad == []


def test_runtime_does_not_reach_up_into_stages_or_tools():
    banned = (
        "warriorcoder.stages",
        "warriorcoder.launcher",
        "warriorcoder.data",
        "warriorcoder.localmodels",
    )
    assert _offending(_files("warriorcoder.runtime"), banned) == []


def test_the_sandbox_is_a_leaf_of_the_runtime():
    """Untrusted-code execution depends on its settings and the contract only: the verifier stage
    and the launcher use it, it uses nothing above it (and never the bus or Triton)."""
    allowed = (
        "warriorcoder.proto",
        "warriorcoder.errors",
        "warriorcoder.runtime.settings",
        "warriorcoder.sandbox",  # its own modules
    )
    bad = [
        f"{p.relative_to(ROOT)} imports {n}"
        for p in _files("warriorcoder.sandbox")
        for n in _imports_of(p)
        if n.startswith("warriorcoder.")
        and not any(n == a or n.startswith(a + ".") for a in allowed)
    ]
    assert bad == []


def test_only_the_cli_reaches_the_stages():
    """Stages are leaves: tools read the arena's state through runtime's stores and shards."""
    bad = []
    for package in (
        "runtime",
        "arena",
        "data",
        "launcher",
        "localmodels",
        "testing",
        "proto",
        "sandbox",
    ):
        bad += _offending(_files(f"warriorcoder.{package}"), ("warriorcoder.stages",))
    assert bad == []


def test_product_code_does_not_import_test_support():
    """Only the launcher (``up --scripted``) may use the scripted models."""
    bad = []
    for package in ("runtime", "stages", "arena", "data", "localmodels", "proto", "sandbox"):
        bad += _offending(_files(f"warriorcoder.{package}"), ("warriorcoder.testing",))
    assert bad == []


# -- public names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _modules())
def test_all_names_exist(name: str):
    module = _import(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert not name.split(".")[-1].startswith("_")
        return
    assert len(set(exported)) == len(exported), f"{name}: __all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"


# -- usage examples -------------------------------------------------------------------------------

_USAGE = re.compile(r"Usage::\s*\n((?:\n|[ \t]+.*\n)+)", re.M)


def _usage_blocks(module: ModuleType) -> list[str]:
    doc = module.__doc__ or ""
    blocks = []
    for m in _USAGE.finditer(doc + "\n"):
        lines = m.group(1).splitlines()
        indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
        blocks.append("\n".join(x[indent:] for x in lines).strip("\n"))
    return blocks


def _is_shell(block: str) -> bool:
    first = block.strip().splitlines()[0]
    return first.startswith(("warriorcoder ", "python ", "python3 "))


def _shell_commands(block: str) -> list[list[str]]:
    joined = re.sub(r"\[[^\]]*\]", " ", block.replace("\\\n", " "))  # optional [groups]
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line:
            out.append(shlex.split(line))
    return out


def _check_shell(name: str, block: str) -> list[str]:
    from warriorcoder.cli import build_parser

    problems = []
    for argv in _shell_commands(block):
        if argv[0] == "warriorcoder":
            args = [a for a in argv[1:] if "|" not in a]
            try:
                build_parser().parse_args(args)
            except SystemExit:
                problems.append(f"{name}: `{' '.join(argv)}` is not a valid command line")
        elif argv[0].startswith("python") and argv[1:2] == ["-m"]:
            if importlib.util.find_spec(argv[2]) is None:
                problems.append(f"{name}: no module {argv[2]} to run")
        else:
            problems.append(f"{name}: shell example must start with warriorcoder or python -m")
    return problems


class _Checker(ast.NodeVisitor):
    """Binds every resolvable call of a usage example to the real signature."""

    def __init__(self, name: str, namespace: dict[str, Any]) -> None:
        self.name = name
        self.ns = namespace
        self.kinds: dict[str, type] = {}  # variable -> class it was built from
        self.problems: list[str] = []

    def _resolve(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Name):
            if node.id in self.ns:
                return self.ns[node.id]
            return None
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            if base is None and isinstance(node.value, ast.Name):
                kind = self.kinds.get(node.value.id)
                if kind is not None:
                    if not hasattr(kind, node.attr):
                        self.problems.append(
                            f"{self.name}: {kind.__name__} has no attribute {node.attr!r}"
                        )
                        return None
                    return getattr(kind, node.attr)
                return None
            if inspect.ismodule(base) or inspect.isclass(base):
                if not hasattr(base, node.attr):
                    self.problems.append(
                        f"{self.name}: {getattr(base, '__name__', base)} has no {node.attr!r}"
                    )
                    return None
                return getattr(base, node.attr)
        return None

    def _bind(self, call: ast.Call) -> None:
        target = self._resolve(call.func)
        if target is None or not callable(target):
            return
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords
        ):
            return
        if [ast.unparse(a) for a in call.args] == ["..."] and not call.keywords:
            return  # `f(...)`: arguments left out on purpose
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return
        params = list(sig.parameters.values())
        is_method = (
            isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id in self.kinds
            and params
            and params[0].name == "self"
        )
        if is_method:
            sig = sig.replace(parameters=params[1:])
        try:
            sig.bind(*call.args, **{k.arg: k.value for k in call.keywords if k.arg})
        except TypeError as exc:
            self.problems.append(f"{self.name}: `{ast.unparse(call)}`: {exc}")

    def _record(self, targets: list[ast.expr], value: ast.expr) -> None:
        if isinstance(value, ast.Await):
            value = value.value
        if isinstance(value, ast.Call):
            made = self._resolve(value.func)
            if inspect.isclass(made):
                for t in targets:
                    if isinstance(t, ast.Name):
                        self.kinds[t.id] = made

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        self._record(node.targets, node.value)

    def visit_withitem(self, node: ast.withitem) -> None:
        self.generic_visit(node)
        if node.optional_vars is not None:
            self._record([node.optional_vars], node.context_expr)

    def visit_Call(self, node: ast.Call) -> None:
        self._bind(node)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self._resolve(node)
        else:
            self.generic_visit(node)


def _check_python(name: str, module: ModuleType, block: str) -> list[str]:
    try:
        tree = compile(
            block,
            f"<{name} usage>",
            "exec",
            flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        )
    except SyntaxError as exc:
        return [f"{name}: usage example is not valid Python: {exc}"]
    namespace: dict[str, Any] = dict(vars(module))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            try:
                exec(compile(ast.Module([node], []), "<usage>", "exec"), namespace)
            except ImportError as exc:
                problems.append(f"{name}: `{ast.unparse(node)}`: {exc}")
    checker = _Checker(name, namespace)
    checker.visit(tree)
    return problems + checker.problems


@pytest.mark.parametrize("name", _modules())
def test_usage_examples_match_the_code(name: str):
    module = _import(name)
    problems: list[str] = []
    for block in _usage_blocks(module):
        if _is_shell(block):
            problems += _check_shell(name, block)
        else:
            problems += _check_python(name, module, block)
    assert problems == []


def test_the_usage_checker_catches_wrong_examples():
    """The checker itself can fail: a wrong keyword, a missing attribute, a bad import."""
    from warriorcoder.runtime import kv

    assert _check_python("kv", kv, "await compare_and_set(kv, 'k', change, bogus=1)")
    assert _check_python("kv", kv, "CasConflictError.nope")
    assert _check_python("kv", kv, "from warriorcoder.runtime.kv import missing_name")
    assert _check_python("kv", kv, "x = CasConflictError('a')\nx.no_such_method()")
    assert _check_python("kv", kv, "await compare_and_set(kv, 'k', change)") == []
    assert _check_shell("cli", "warriorcoder serve nothing --config a.yaml")
    assert _check_shell("cli", "python -m warriorcoder.no_such_module")
    assert _check_shell("cli", "warriorcoder serve judge --config a.yaml") == []


def test_every_module_says_what_it_is():
    missing = [n for n in _modules() if not (_import(n).__doc__ or "").strip()]
    assert missing == []
