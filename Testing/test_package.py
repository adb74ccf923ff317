"""Static checks of the engine package: Python 3.9 syntax, no Slicer/Qt imports, files kept small."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "ExtremeAugSegment" / "extremeaug"
FILES = sorted(ENGINE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_engine_file_is_python39_and_headless(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert not imported & {"slicer", "qt", "PythonQt", "ctk", "vtk", "PyQt5", "PySide2", "PySide6"}
    if path.name != "__main__.py" and any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body):
        first = tree.body[0]
        assert isinstance(first, ast.ImportFrom) and first.module == "__future__" or \
            isinstance(first, ast.Expr) and isinstance(tree.body[1], ast.ImportFrom) and \
            tree.body[1].module == "__future__", "postponed annotations keep `X | Y` hints legal on 3.9"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400
