"""The package's import rules: each layer imports only what sits below it.

Read statically from every module's source (function-level imports included), so an import
hidden inside a function breaks the rule as much as one at the top. A runtime check then imports
the whole engine in a fresh interpreter and looks at what came in with it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import REPO

PACKAGE = REPO / "src" / "sparseforge"

# layer -> import prefixes it must not use (the engine also never imports Lightning, transitively:
# see test_the_engine_runs_without_lightning)
FORBIDDEN = {
    "sparsity": (
        "lightning",
        "pytorch_lightning",
        "sparseforge.lightning",
        "sparseforge.methods",
        "sparseforge.continual",
    ),
    "models": ("sparseforge.sparsity", "sparseforge.lightning", "sparseforge.methods", "lightning"),
    "data": (
        "sparseforge.models",
        "sparseforge.continual",
        "sparseforge.methods",
        "sparseforge.lightning",
        "lightning",
    ),
    "continual": ("sparseforge.methods", "sparseforge.lightning", "lightning", "pytorch_lightning"),
    "methods": ("sparseforge.lightning", "sparseforge.sweeps", "sparseforge.train"),
    "config": ("sparseforge.sweeps", "sparseforge.lightning", "sparseforge.methods", "torch", "lightning"),
    "utils": ("sparseforge.sparsity", "sparseforge.methods", "sparseforge.continual", "sparseforge.lightning"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``path``."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found += [(node.lineno, name)] + [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


def _violations() -> list[str]:
    out = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            reported = set()
            for line, module in imported_modules(path):
                hit = next((f for f in forbidden if module == f or module.startswith(f + ".")), None)
                if hit and line not in reported:
                    reported.add(line)
                    out.append(f"{path.relative_to(REPO)}:{line} imports {module} ({layer} must not import {hit})")
    return out


def test_layers_import_only_what_sits_below_them():
    assert _violations() == []


def test_the_rule_check_catches_a_crossing(tmp_path, monkeypatch):
    """The checker itself: a module of the engine that imports the glue is reported."""
    fake = tmp_path / "sparseforge"
    (fake / "sparsity").mkdir(parents=True)
    (fake / "sparsity" / "bad.py").write_text("def f():\n    from sparseforge.lightning import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _violations() == [
        "sparseforge/sparsity/bad.py:2 imports sparseforge.lightning (sparsity must not import sparseforge.lightning)"
    ]


@pytest.mark.parametrize(
    "package", ["sparseforge.sparsity", "sparseforge.continual", "sparseforge.models", "sparseforge.data"]
)
@pytest.mark.e2e  # a CLI subprocess
def test_the_engine_runs_without_lightning(package):
    """Importing every module of the plain-PyTorch layers pulls in no Lightning, transitively."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "print(bad[:3]); sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
