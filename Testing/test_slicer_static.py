"""Static checks of what cannot run without the Slicer application: the module file and its library compile
(for Slicer's Python 3.9 as well), the widget uses only widgets that exist in the .ui, the parameter node
matches the .ui, CMake lists every file, and the extension description files are complete."""
from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "ExtremeAugSegment"
LIB = MODULE / "ExtremeAugSegmentLib"
UI = MODULE / "Resources" / "UI" / "ExtremeAugSegment.ui"
SLICER_ONLY = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")


def module_python_files():
    return sorted(p for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts and ".egg-info" not in str(p))


def ui_widgets() -> dict:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def imported_modules(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", [MODULE / "ExtremeAugSegment.py", *sorted(LIB.glob("*.py"))], ids=lambda p: p.name)
def test_module_files_compile_for_python_3_9(path):
    source = path.read_text(encoding="utf-8")
    compile(source, str(path), "exec")
    ast.parse(source, feature_version=(3, 9))   # Slicer's Python may be 3.9: no match, no 3.10+ syntax


def test_module_file_is_thin_and_has_module_widget_and_test():
    path = MODULE / "ExtremeAugSegment.py"
    classes = {n.name: n for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)}
    assert set(classes) == {"ExtremeAugSegment", "ExtremeAugSegmentWidget", "ExtremeAugSegmentTest"}
    assert [b.id for b in classes["ExtremeAugSegmentTest"].bases] == ["ScriptedLoadableModuleTest"]
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 100
    source = path.read_text(encoding="utf-8")
    assert 'self.parent.categories = ["Segmentation"]' in source and 'self.parent.title = "ExtremeAugSegment"' in source


def test_every_ui_name_the_widget_uses_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", (LIB / "Widget.py").read_text(encoding="utf-8")))
    widgets = ui_widgets()
    assert used, "the widget uses no ui names?"
    assert not used - set(widgets), f"used but not in the .ui: {sorted(used - set(widgets))}"
    names = [w.get("name") for w in ET.parse(UI).getroot().iter("widget")]
    assert len(names) == len(set(names)), "widget names in the .ui must be unique"


def test_every_widget_connects_to_a_parameter_and_back():
    tree = ast.parse((LIB / "Parameter.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    connected = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                connected[prop.find("string").text] = name
    assert set(connected) <= fields, f"the .ui names unknown parameters: {set(connected) - fields}"
    assert fields - set(connected) == {"projectFolder"}, "every parameter but the project folder has a widget"
    assert "__future__" not in imported_modules(LIB / "Parameter.py")   # the wrapper needs real annotations


def test_training_parameters_take_their_names_and_defaults_from_the_engine():
    """One definition of each training default: the parameter node's training fields are named like the
    engine's TrainConfig/RunOptions fields and their defaults are read from TRAIN_DEFAULTS/RUN_DEFAULTS."""
    from dataclasses import fields as dataclass_fields

    from extremeaug.common.config import RunOptions, TrainConfig
    cls = next(n for n in ast.parse((LIB / "Parameter.py").read_text(encoding="utf-8")).body
               if isinstance(n, ast.ClassDef))
    engine = {f.name for f in dataclass_fields(TrainConfig)} | {f.name for f in dataclass_fields(RunOptions)}
    checked = []
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and node.target.id == "width":   # a preset combo: "auto" is None
            assert node.value.value == "auto" and TrainConfig().width is None
        elif isinstance(node, ast.AnnAssign) and node.target.id in engine:
            names = {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)}
            bases = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            assert node.target.id in names and bases & {"TRAIN_DEFAULTS", "RUN_DEFAULTS"}, ast.dump(node.value)
            checked.append(node.target.id)
    assert sorted(checked) == ["augment", "device", "epochs", "time_budget_min"]


def test_table_columns_match_the_ui():
    import sys
    sys.path.insert(0, str(MODULE))
    from ExtremeAugSegmentLib import Tables
    for table, columns in (("casesTableWidget", Tables.CASE_COLUMNS), ("versionsTableWidget", Tables.VERSION_COLUMNS)):
        headers = [c.find("property/string").text for c in ui_widgets()[table].findall("column")]
        assert headers == list(columns), table


FRONT_ENDS = [MODULE / "extremeaug" / "cli" / "main.py", MODULE / "extremeaug" / "cli" / "project.py",
              MODULE / "extremeaug" / "project" / "worker.py",
              *[LIB / n for n in ("Logic.py", "TrainingMonitor.py", "Tables.py", "SelfTest.py", "Widget.py",
                                  "Results.py", "PhantomSample.py", "Panel.py", "Session.py", "PanelTest.py")]]


@pytest.mark.parametrize("path", FRONT_ENDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_front_ends_use_the_project_api_only(path):
    """The command line, the worker and the Slicer module reach the project through `extremeaug.project`
    (Project, records, choices) and never into its store, cases, runs, versions or suggest modules."""
    here = ".".join(path.parent.relative_to(MODULE).parts)   # the file's package
    reached = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:   # relative: resolve against the file's package
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                module = f"{base}.{module}" if module else base
            reached.add(module)
        elif isinstance(node, ast.Import):
            reached |= {a.name for a in node.names}
    project = {m for m in reached if m.startswith("extremeaug.project")}
    assert project <= {"extremeaug.project"}, project


def test_cmake_lists_every_python_file_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "ExtremeAugSegment")
    scripts = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", text, re.S).group(1).split()
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", text, re.S).group(1).split()
    on_disk = {p.relative_to(MODULE).as_posix() for p in module_python_files()}
    assert set(scripts) == on_disk, f"missing: {on_disk - set(scripts)}; listed but absent: {set(scripts) - on_disk}"
    assert set(resources) == {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*")
                              if p.is_file()}
    assert "slicerMacroBuildScriptedModule" in text
    assert "slicer_add_python_unittest(SCRIPT ExtremeAugSegment.py)" in text
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "project(ExtremeAugSegment)" in top and "add_subdirectory(ExtremeAugSegment)" in top
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', top), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top


def test_extension_description_and_catalog_entry():
    s4ext = {}
    for line in (ROOT / "ExtremeAugSegment.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()
    required = ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "description", "screenshoturls", "status", "enabled")
    assert not [k for k in required if not s4ext.get(k)], s4ext
    entry = json.loads((ROOT / "ExtremeAugSegment.json").read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_url", "tier"}   # the schema allows no other property
    assert entry["scm_url"] == s4ext["scmurl"] and entry["category"] == s4ext["category"] == "Segmentation"
    assert entry["build_dependencies"] == s4ext["depends"].split() == ["PyTorch"]
    assert entry["build_subdirectory"] == s4ext["build_subdirectory"]


@pytest.mark.parametrize("name", ["Logic.py", "SceneIO.py", "TrainingMonitor.py", "SelfTest.py", "InstallLogic.py",
                                  "Tables.py", "Results.py", "Panel.py", "Session.py"])
def test_logic_uses_mrml_only(name):
    """Logic runs without the application (and in a bare MRML scene): no Qt, no module framework."""
    bad = {m for m in imported_modules(LIB / name) if m.split(".")[0] in ("qt", "ctk", "PythonQt") or m in SLICER_ONLY}
    assert not bad, bad


def test_engine_imports_nothing_from_slicer():
    for path in (MODULE / "extremeaug").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in ("slicer", "qt", "ctk", "vtk")}
        assert not bad, (path, bad)


GUI_THREAD = ("Widget.py", "Logic.py", "Results.py", "TrainingMonitor.py", "Tables.py", "SceneIO.py", "EditorPanel.py",
              "Slots.py", "Panel.py", "Session.py")


@pytest.mark.parametrize("name", GUI_THREAD)
def test_nothing_the_panel_calls_runs_inference_or_waits(name):
    """What the panel's slots and timer reach never runs a model or blocks: segmentation goes through
    `start_segment` (a child process), scores are read as recorded, a cancel does not wait, and there is no
    sleep, process wait or synchronous subprocess. (SelfTest, which waits on purpose, is the test harness.)"""
    problems = []
    for node in ast.walk(ast.parse((LIB / name).read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            problems += [f"imports {n}" for n in names if n.split(".")[0] in ("torch", "onnxruntime") or
                         n in ("extremeaug.inference.segmenter", "extremeaug.training.train", "subprocess")]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        method, keywords = node.func.attr, {k.arg: k.value for k in node.keywords}
        onProject = ast.unparse(node.func.value).endswith("project")   # a call of the project API
        if method in ("sleep", "wait", "communicate") or (onProject and method == "segment"):
            problems.append(f"calls .{method}() at line {node.lineno}")
        if onProject and method == "versions" and getattr(keywords.get("rescore"), "value", True) is not False:
            problems.append(f"versions() without rescore=False at line {node.lineno}")
        if onProject and method == "cancel" and getattr(keywords.get("wait_s"), "value", None) != 0:
            problems.append(f"cancel() that waits at line {node.lineno}")
    assert not problems, problems


def _ui_property(widget, name):
    prop = next((p for p in widget.findall("property") if p.get("name") == name), None)
    return prop.find("string").text if prop is not None and prop.find("string") is not None else None


def test_the_panel_self_test_clicks_every_button_of_the_panel():
    """PanelTest (run by ExtremeAugSegmentTest inside Slicer) reaches every button the .ui has, and sets
    every input selector a clinician sets."""
    source = (LIB / "PanelTest.py").read_text(encoding="utf-8")
    clicked = set(re.findall(r"ui\.(\w+)\.click\(\)", source))
    buttons = {name for name, w in ui_widgets().items()
               if w.get("class") in ("QPushButton", "qMRMLSegmentationShow3DButton")}
    assert buttons and buttons == clicked, f"never clicked: {buttons - clicked}; unknown: {clicked - buttons}"
    selected = set(re.findall(r"ui\.(\w+)\.setCurrentNode\(", source))
    assert selected == {"inputVolumeSelector", "inputSegmentationSelector", "segmentVolumeSelector"}
    assert "def test_PanelLoop" in (MODULE / "ExtremeAugSegment.py").read_text(encoding="utf-8")


def test_slicer_widgets_do_what_slicer_does_for_the_project_folder_and_show_3d():
    """The folder history is kept by ctkPathLineEdit's settingKey (set in the .ui, as Slicer's own panels
    do); Show 3D is Slicer's qMRMLSegmentationShow3DButton, which never removes a closed surface that is a
    segmentation's source and shows whether the result has one."""
    widgets = ui_widgets()
    assert _ui_property(widgets["projectPathLineEdit"], "settingKey") == "ExtremeAugSegment/ProjectFolder"
    assert widgets["show3DButton"].get("class") == "qMRMLSegmentationShow3DButton"
    widget = (LIB / "Widget.py").read_text(encoding="utf-8")
    assert "self.ui.show3DButton.setSegmentationNode(node)" in widget


def _method(source: str, name: str) -> ast.FunctionDef:
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_the_panel_reads_nodes_from_its_selectors_never_from_the_parameter_node():
    """After Close Scene or a .mrb load the parameterNodeWrapper's GUI connections are made after the
    module's own, so in a selector's handler the parameter node still holds the previous node."""
    nodes = {"inputVolume", "inputSegmentation", "segmentVolume", "resultSegmentation"}
    reads = [n.attr for n in ast.walk(ast.parse((LIB / "Widget.py").read_text(encoding="utf-8")))
             if isinstance(n, ast.Attribute) and n.attr in nodes and "_parameterNode" in ast.unparse(n.value)]
    assert reads == [], reads


def test_reload_takes_the_embedded_editors_shortcuts_off_the_main_window_and_leaves_the_editor_module_alone():
    widget = (LIB / "Widget.py").read_text(encoding="utf-8")
    assert "self.correction.exit()" in ast.unparse(_method(widget, "cleanup"))
    editor = (LIB / "EditorPanel.py").read_text(encoding="utf-8")
    singleton = re.search(r'EDITOR_SINGLETON = "([^"]+)"', editor).group(1)
    assert singleton != "SegmentEditor"   # the Segment Editor module's node: its selection is the clinician's
