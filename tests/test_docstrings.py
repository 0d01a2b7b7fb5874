"""Every public module, class, function, method and CLI command of the four packages has a docstring.

Walks quantart, quantart_export (export/), quantart_runtime (runtime/) and quantart_benchmarks
(benchmarks/) as source (ast), so modules whose optional dependencies (TensorRT, Triton, Ray) are not
installed are checked too. Public: no leading underscore in the module path or the name, defined in
that package (top-level functions and classes, methods and properties defined in a public class).
A click command or group is checked whatever its Python name, since its docstring is its ``--help``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"quantart": "quantart", "quantart_export": "export", "quantart_runtime": "runtime",
            "quantart_benchmarks": "benchmarks"}
MIN_LENGTH = 10  # a word or two is not documentation


def _public_modules(folder: str) -> list[Path]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT / folder).parts
        if "__pycache__" in parts or any(p.startswith("_") and p not in ("__init__.py", "__main__.py") for p in parts):
            continue
        out.append(path)
    return out


def _is_click_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for deco in fn.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in ("command", "group"):
            return True
    return False


def _documented(node) -> bool:
    doc = ast.get_docstring(node)
    return bool(doc) and len(doc.strip()) >= MIN_LENGTH


def missing_docstrings(path: Path) -> list[str]:
    """Qualified names of the public definitions in ``path`` that have no docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    missing = [] if _documented(tree) else ["<module>"]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if (not node.name.startswith("_") or _is_click_command(node)) and not _documented(node):
                missing.append(node.name)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            if not _documented(node):
                missing.append(node.name)
            for item in node.body:
                if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and (not item.name.startswith("_") or _is_click_command(item)) and not _documented(item)):
                    missing.append(f"{node.name}.{item.name}")
    return missing


MODULES = [(pkg, path) for pkg, folder in PACKAGES.items() for path in _public_modules(folder)]


@pytest.mark.parametrize("package, path", MODULES, ids=[str(p.relative_to(ROOT)) for _, p in MODULES])
def test_public_names_have_docstrings(package, path):
    missing = missing_docstrings(path)
    assert not missing, f"{path.relative_to(ROOT)} ({package}): no docstring on {', '.join(missing)}"


def test_the_walk_sees_every_package():
    seen = {pkg for pkg, _ in MODULES}
    assert seen == set(PACKAGES)
    assert len(MODULES) > 40


def test_click_commands_are_found(tmp_path):
    source = ('"""A module docstring."""\nimport click\n\n@click.group()\ndef cli():\n    pass\n\n'
              '@cli.command("run")\ndef _run():\n    """Run the job (a docstring)."""\n\n'
              'class K:\n    """A documented class."""\n    def method(self):\n        pass\n'
              '    @property\n    def value(self):\n        return 1\n    def _private(self):\n        pass\n')
    path = tmp_path / "sample.py"
    path.write_text(source)
    assert missing_docstrings(path) == ["cli", "K.method", "K.value"]
