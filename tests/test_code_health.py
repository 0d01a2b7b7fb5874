"""Code health: one utility layer (quantart_runtime.util) and no hand-written copies of it.

Greps the source of the four packages (quantart, export, runtime, benchmarks) and the tests:
``os.replace`` is called only in runtime/util/atomic.py, and no other module defines its own PSNR,
sha256-of-a-file or one-line error helper.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("quantart", "export", "runtime", "benchmarks", "tests")
UTIL = ROOT / "runtime" / "util"
ATOMIC = UTIL / "atomic.py"


def _sources() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _calls(tree: ast.AST, dotted: str) -> list[int]:
    """Line numbers where ``dotted`` (e.g. ``os.replace``) is called or referenced as an attribute."""
    mod, attr = dotted.split(".")
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr == attr and isinstance(n.value, ast.Name) and n.value.id == mod]


def _imports_from(tree: ast.AST, module: str, name: str) -> list[int]:
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == module
            and any(a.name == name for a in n.names)]


def test_the_utility_layer_is_where_the_rule_says():
    for name in ("atomic.py", "digest.py", "psnr.py", "errors.py"):
        assert (UTIL / name).is_file(), name
    assert _calls(ast.parse(ATOMIC.read_text()), "os.replace"), "atomic.py must do the renaming itself"


def test_os_replace_only_in_the_atomic_module():
    """Atomic writes go through quantart_runtime.util (atomic_open / write_* / atomic_dir / replace)."""
    offenders = []
    for path in _sources():
        if path == ATOMIC or path == Path(__file__).resolve():
            continue
        tree = ast.parse(path.read_text())
        offenders += [f"{_rel(path)}:{line}" for line in _calls(tree, "os.replace") + _calls(tree, "os.rename")]
        offenders += [f"{_rel(path)}:{line} (from os import replace)" for line in _imports_from(tree, "os", "replace")]
    assert not offenders, "hand-written atomic writes (use quantart_runtime.util): " + ", ".join(offenders)


# A function whose name says it is one of the utilities, defined outside runtime/util. In the tests only
# PSNR and sha256 count: a test's ``one_line`` helper asserts that an output is one line, it formats nothing.
UTILITY_NAMES = re.compile(r"^_?(psnr\w*|sha256\w*|one_line|first_line)$")
TEST_UTILITY_NAMES = re.compile(r"^_?(psnr\w*|sha256\w*)$")


def test_no_second_copy_of_psnr_sha256_or_the_error_formatter():
    offenders = []
    for path in _sources():
        if UTIL in path.parents or path == Path(__file__).resolve():
            continue
        names = TEST_UTILITY_NAMES if path.parent.name == "tests" else UTILITY_NAMES
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and names.match(node.name):
                offenders.append(f"{_rel(path)}:{node.lineno} def {node.name}")
    assert not offenders, "use quantart_runtime.util instead of: " + ", ".join(offenders)


@pytest.mark.parametrize("pattern, what", [
    (r"hashlib\.sha256\(\s*(open|\w+\.read_bytes)\(", "a file hashed by hand (use sha256_file)"),
    (r"10(\.0)?\s*\*\s*(np|math)\.log10\(", "a PSNR formula (use psnr_uint8 / psnr_unit)"),
    (r"str\((exc|e|ex|error|err)\)(\.strip\(\))?\.splitlines\(\)\[0\]", "a first-line error message (use one_line)"),
])
def test_no_inline_copies(pattern, what):
    """Inline copies outside runtime/util, in the packages (tests may compute references their own way)."""
    regex = re.compile(pattern)
    offenders = [f"{_rel(p)}:{i}" for p in _sources() if UTIL not in p.parents and p.parent.name != "tests"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if regex.search(line)]
    assert not offenders, f"{what}: " + ", ".join(offenders)
