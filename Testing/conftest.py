from __future__ import annotations

import locale
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from extremeaug.data.phantom import write_phantoms
from extremeaug.data.preprocess import Preprocessing, make_template
from extremeaug.networks.export import export_onnx
from extremeaug.networks.model import ResUNet

# the real MRI set lives beside the repository (never inside it); EXTREMEAUG_IVD_DATA points elsewhere
REAL_DATA = Path(os.environ.get("EXTREMEAUG_IVD_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
                                / "ivd-mr-t2-lumbar"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory):
    """Four phantom (image, mask) file pairs on disk."""
    return write_phantoms(tmp_path_factory.mktemp("phantoms"), 4)


def make_image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def oblique_direction(deg_a=20.0, deg_b=-12.0):
    a, b = np.radians(deg_a), np.radians(deg_b)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


def write_dicom_series(image: sitk.Image, folder: Path) -> Path:
    """One MR DICOM file per slice, with the position and orientation tags a scanner writes.

    SimpleITK's DICOM writer (GDCM) leaves the process in the C library's "C" locale, whose text encoding is
    ASCII: later code that opens a file without naming an encoding (torch.compile's kernel templates) would
    fail in this test process. The locale is put back."""
    before = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_slices(image, folder)
    finally:
        locale.setlocale(locale.LC_ALL, before)


def _write_dicom_slices(image: sitk.Image, folder: Path) -> Path:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.1"
    spacing = image.GetSpacing()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in [("0008|0060", "MR"), ("0020|000e", series), ("0020|000d", series + ".0"),
                           ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", f"{spacing[0]}\\{spacing[1]}"),
                           ("0018|0050", str(spacing[2]))]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(s)
    return folder


@pytest.fixture(scope="session")
def random_model(tmp_path_factory, phantoms):
    """An untrained but genuine extremeaug ONNX model (geometry and error tests need no training)."""
    torch.manual_seed(0)
    net = ResUNet(4)
    template = make_template(sitk.ReadImage(str(phantoms[0][0]), sitk.sitkFloat32))
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    export_onnx(net, path, {"preprocessing": Preprocessing("sagittal", template=template).to_dict(),
                            "threshold": 0.5, "min_component_mm3": 0.0, "width": 4})
    return path


def run_cli(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "extremeaug", *map(str, args)], capture_output=True, text=True,
                          encoding="utf-8", errors="replace",
                          timeout=timeout, **kw)


def one_line_error(result, *needles):
    """Bad input's contract: exit 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def mount(tmp_path):
    """Real failing file systems: a read-only bind mount of a folder, and a tiny tmpfs disk that `fill` fills to
    a chosen number of free bytes (needs root; skipped, with the reason, where mounting is refused)."""
    mounted = []

    def run(*args):
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot {' '.join(args[:3])} here: {result.stderr.strip()}")
        return result

    def read_only(source):
        target = tmp_path / "read-only"
        target.mkdir()
        run("mount", "--bind", str(source), str(target))
        mounted.append(target)
        run("mount", "-o", "remount,ro,bind", str(target))
        return target

    def tiny_disk(kib):
        target = tmp_path / "tiny"
        target.mkdir()
        run("mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(target))
        mounted.append(target)
        return target

    def fill(disk, leave=0):
        """Fill `disk` with a filler file until `leave` bytes (rounded to its pages) stay free; returns the file,
        whose removal frees the space again."""
        filler = disk / "filler"
        with open(filler, "ab") as f:
            while True:
                room = shutil.disk_usage(disk).free - leave
                if room <= 0:
                    break
                try:
                    f.write(b"\0" * min(room, 1 << 20))
                    f.flush()
                except OSError:
                    break
        return filler

    yield type("Mount", (), {"read_only": staticmethod(read_only), "tiny_disk": staticmethod(tiny_disk),
                             "fill": staticmethod(fill)})
    for target in reversed(mounted):   # lazily when a file is still open there: no mount outlives the test
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def scene():
    """A bare MRML scene with the Segmentations and Volumes logics, as the 3D Slicer application sets them up
    (the slicer-core wheel; see DEVELOPERS.md)."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
    import vtk

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    logics = []
    for name, cls in (("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Volumes", slicer.vtkSlicerVolumesLogic)):
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, logic)
        logics.append(logic)
    yield scene
    scene.Clear(1)


MODULE_DIR = Path(__file__).resolve().parents[1] / "ExtremeAugSegment"


def module_lib_importable() -> None:
    """ExtremeAugSegmentLib (the Slicer module's library) importable, as Slicer makes it."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


def raising(error: BaseException):
    """A stand-in for the compiled step that fails as a real one would at its first call."""
    def compiled(*arguments):
        raise error
    return compiled


@pytest.fixture
def logic(scene, tmp_path):
    """The Slicer module's Logic on a new project, in the real MRML scene above."""
    module_lib_importable()
    from ExtremeAugSegmentLib.Logic import ExtremeAugSegmentLogic
    logic = ExtremeAugSegmentLogic(scene)
    logic.openProject(str(tmp_path / "project"), create=True)
    yield logic
    logic.closeProject()
