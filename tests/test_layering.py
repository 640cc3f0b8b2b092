"""The layering, checked on the source: each package imports only its own layer and the layers below it.

Rule: ``curate/`` and ``caption/`` (stages, no Ray) <- ``model/`` (networks, the pipeline object) <- ``train/``
(training loops and datasets) <- ``pipelines/`` (Ray graphs, CLI, reports); nothing imports upwards, and
``curate`` and ``caption`` may use each other (``caption`` reads clips through ``curate.media``).

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"curate": 0, "caption": 0, "model": 1, "train": 2, "pipelines": 3}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in a module that names one of the layered packages."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in LAYER]
    return out


def upward_imports() -> list[str]:
    bad = []
    for package, level in LAYER.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, target in imports_of(path):
                if LAYER[target] > level:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {LAYER[target]} > {level})")
    return bad


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_the_check_sees_function_local_imports(tmp_path):
    """The parser counts an import inside a function body, and a relative import is not mistaken for one."""
    mod = tmp_path / "m.py"
    mod.write_text("import os\nfrom . import x\n\ndef f():\n    from pipelines.generate import cli\n"
                   "    import train.dist as d\n")
    assert imports_of(mod) == [(5, "pipelines"), (6, "train")]


@pytest.mark.parametrize("package", sorted(LAYER))
def test_every_layered_package_is_scanned(package):
    assert list((ROOT / package).glob("*.py")), f"{package}/ has no modules: the layering test reads nothing"
