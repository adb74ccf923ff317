"""The tree shows the pipeline: every engine module lives in the package of its stage, packages import only
the stages below them (function-level imports included), the module graph has no cycle, and every relative
link in README.md and docs/ points at a file that exists."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from conftest import MODULE_DIR

ROOT = MODULE_DIR.parent
ENGINE = MODULE_DIR / "extremeaug"
# bottom to top; a package may import its own modules and those of the packages before it
LAYERS = ("common", "data", "networks", "training", "inference", "evaluation", "experiments", "project", "cli")


def _imports(path: Path, package: str) -> set:
    """Modules of the engine a file imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                names = [f"{module}.{a.name}" for a in node.names] + [module]
            else:
                names = [node.module or ""]
            found |= {n for n in names if n.startswith("extremeaug")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("extremeaug")}
    return found


def engine_graph() -> dict:
    modules = {}
    for path in ENGINE.rglob("*.py"):
        parts = path.relative_to(MODULE_DIR).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = ".".join(parts[:-1])
        modules[name] = _imports(path, package)
    return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def layer(module: str):
    """A module's stage package (None for the package root: its version and entry point)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_every_engine_module_lives_in_a_stage_package():
    loose = sorted(p.name for p in ENGINE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside a stage package: {loose}"
    packages = sorted(p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == sorted(LAYERS)
    docstring = ast.get_docstring(ast.parse((ENGINE / "__init__.py").read_text(encoding="utf-8")))
    assert " -> ".join(LAYERS) in " ".join(docstring.split()), "the package docstring names the layers in order"
    developers = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
    assert all(f"{name}/" in developers for name in LAYERS), "DEVELOPERS.md describes every package"


def test_no_package_imports_a_package_above_it():
    upward = []
    for module, deps in engine_graph().items():
        here = layer(module)
        for dep in deps:
            there = layer(dep)
            if module == "extremeaug":   # the root's docstring and version: it may name only common errors
                ok = there == "common"
            elif module == "extremeaug.__main__":
                ok = there == "cli"
            else:
                ok = there is None or LAYERS.index(there) <= LAYERS.index(here)
            if not ok:
                upward.append(f"{module} -> {dep}")
    assert not upward, upward


def test_the_engine_import_graph_has_no_cycles():
    graph = engine_graph()
    # a package's __init__ re-exporting its own modules is not a cycle of the code that imports it
    for m in graph:
        graph[m] = {d for d in graph[m] if not (m.startswith(d + ".") and d != "extremeaug")}
    done, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for d in sorted(graph[m]):
            visit(d)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    assert "extremeaug.cli.project" in graph["extremeaug.cli.main"] and len(graph) > 30


def _top_level_imports(path: Path) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_the_web_front_end_imports_only_the_project_api_the_scene_logic_and_trame():
    """The web station holds no project logic and no copy of the module's: the project API, the module's
    MRML-only library, trame / trame-slicer, and the standard library (plus aiohttp, trame's server)."""
    allowed = ("extremeaug.project", "extremeaug.common.errors", "extremeaug.common.files", "ExtremeAugSegmentLib",
               "trame", "aiohttp")   # files: the one write path, for the users file and uploads
    stdlib = set(sys.stdlib_module_names)
    wrong = {f"{path.name}: {m}" for path in (MODULE_DIR / "ExtremeAugWeb").glob("*.py")
             for m in _top_level_imports(path)
             if not m.startswith(allowed) and m.split(".")[0] not in stdlib}
    assert not wrong, sorted(wrong)
    engine = {m for path in (MODULE_DIR / "ExtremeAugWeb").glob("*.py") for m in _top_level_imports(path)
              if m.startswith("extremeaug")}
    assert "extremeaug.project" in engine


DOCS = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_that_exists(page):
    broken = []
    for match in LINK.finditer(page.read_text(encoding="utf-8")):
        target = next(g for g in match.groups() if g)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue   # a web address or an anchor on the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, broken
