"""Files built to mislead the reader, and commands that would destroy their own input: each is refused with
one line before any work, and nothing is written (the faults of the hostile-input review; README "Bad input")."""
from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import one_line_error, run_cli, write_dicom_series
from extremeaug.common.errors import ExtremeAugError
from extremeaug.data import guard
from extremeaug.data.io import check_outputs, read_scan
from extremeaug.project import Project


def scan_array(dtype=np.int16, shape=(6, 20, 24)):
    return (np.random.default_rng(0).random(shape) * 1000).astype(dtype)


def write(tmp_path, name, array):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
@pytest.mark.parametrize("keep", [0.5, 200])
def test_a_truncated_nifti_is_refused_not_zero_filled(tmp_path, name, keep):
    path = write(tmp_path, name, scan_array())
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(ExtremeAugError, match="truncated|not a NIfTI|damaged"):
        read_scan(str(path))
    project = Project.create(tmp_path / "p")
    with pytest.raises(ExtremeAugError):
        project.add(str(path))
    assert project.cases() == [] and not (tmp_path / "p" / "cases").exists() or \
        not any((tmp_path / "p" / "cases").iterdir())
    project.close()


@pytest.mark.parametrize("name", ["nan.nii", "nan.nii.gz", "nan.nrrd", "nan.mha"])
def test_nan_and_inf_voxels_are_refused_in_every_format(tmp_path, name):
    array = scan_array(np.float32)
    array[2, 3, 4] = np.nan
    path = write(tmp_path, name, array)
    with pytest.raises(ExtremeAugError, match="NaN or infinite"):
        read_scan(str(path))
    array[2, 3, 4] = np.inf
    path = write(tmp_path, "inf" + name[3:], array)
    with pytest.raises(ExtremeAugError, match="NaN or infinite"):
        read_scan(str(path))


def test_a_finite_float_nifti_reads_unchanged(tmp_path):
    array = scan_array(np.float32, (5, 300, 400))   # several gzip chunks of voxels
    for name in ("ok.nii", "ok.nii.gz"):
        read = sitk.GetArrayFromImage(read_scan(str(write(tmp_path, name, array))))
        assert np.array_equal(read, array)


def test_a_header_announcing_a_huge_volume_is_refused_before_reading(tmp_path):
    """A 4 KB file claiming 800^3 int16 voxels (the reader would allocate 1 GB and zero-fill it)."""
    path = write(tmp_path, "liar.nii", scan_array())
    data = bytearray(path.read_bytes()[:4096])
    data[40:56] = struct.pack("<8h", 3, 800, 800, 800, 1, 1, 1, 1)
    path.write_bytes(bytes(data))
    with pytest.raises(ExtremeAugError, match="truncated"):
        read_scan(str(path))
    big = write(tmp_path, "big.nrrd", scan_array())
    limit = guard.MAX_VOXELS
    try:
        guard.MAX_VOXELS = 1000
        with pytest.raises(ExtremeAugError, match="2,880 voxels .* more than the limit of 1,000"):
            read_scan(str(big))
    finally:
        guard.MAX_VOXELS = limit


def test_a_detached_header_may_not_pull_files_from_elsewhere(tmp_path):
    outside = tmp_path / "secret.raw"
    outside.write_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).tobytes())
    folder = tmp_path / "scans"
    folder.mkdir()
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nencoding: raw\n"
              "data file: {}\n")
    (folder / "abs.nhdr").write_text(header.format(outside))
    (folder / "up.nhdr").write_text(header.format("../secret.raw"))
    (folder / "mhd.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_UCHAR\n"
                                    "ElementDataFile = ../secret.raw\n")
    for name in ("abs.nhdr", "up.nhdr", "mhd.mhd"):
        with pytest.raises(ExtremeAugError, match="outside the header's folder"):
            read_scan(str(folder / name))
    (folder / "secret.raw").write_bytes(outside.read_bytes())
    (folder / "beside.nhdr").write_text(header.format("secret.raw"))
    assert read_scan(str(folder / "beside.nhdr"), keep_type=True).GetSize() == (4, 3, 2)


def test_outputs_that_would_replace_an_input_or_cannot_be_written_are_refused_first(tmp_path, random_model):
    scan = write(tmp_path, "v.nii.gz", scan_array())
    before = scan.read_bytes()
    result = run_cli("segment", "--model", random_model, "--image", scan, "--out", scan)
    one_line_error(result, "is also the input")
    assert scan.read_bytes() == before   # the scan is intact
    one_line_error(run_cli("segment", "--model", random_model, "--image", scan, "--out", tmp_path / "m.nii.gz",
                           "--probabilities", tmp_path / "m.nii.gz"), "is also the output")
    one_line_error(run_cli("segment", "--model", random_model, "--image", scan, "--out", tmp_path / "m.png"),
                   "unknown image extension")
    one_line_error(run_cli("segment", "--model", random_model, "--image", scan, "--out", tmp_path),
                   "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]   # nothing written
    link = tmp_path / "link.nii.gz"
    link.hardlink_to(scan)
    with pytest.raises(ExtremeAugError, match="is also the input"):
        check_outputs([scan], [link])


def test_a_gzip_that_is_not_gzip_is_refused(tmp_path):
    path = tmp_path / "scan.nii.gz"
    raw = write(tmp_path, "scan.nii", scan_array()).read_bytes()
    path.write_bytes(gzip.compress(raw)[:-40] + b"\0" * 40)   # the stream's end overwritten
    with pytest.raises(ExtremeAugError):
        read_scan(str(path))


@pytest.mark.parametrize("args, needle", [
    (["segment", "--model", "m.onnx", "--image", "v.nii.gz", "--out", "o.nii.gz", "--threshold", "nan"],
     "finite number"),
    (["segment", "--model", "m.onnx", "--image", "v.nii.gz", "--out", "o.nii.gz", "--min-component-mm3", "-5"],
     "0 or more"),
    (["segment", "--model", "m.onnx", "--image", "v.nii.gz", "--out", "o.nii.gz", "--threshold", "1.5"],
     "probability between 0 and 1"),
    (["train", "--image", "v.nii.gz", "--label", "l.nii.gz", "--out", "m", "--lr", "nan"], "finite number"),
    (["project", "train", "p", "--time-budget", "inf"], "finite number"),
    (["project", "train", "p", "--checkpoint-minutes", "nan"], "finite number")])
def test_numbers_that_are_not_numbers_are_refused_when_parsed(tmp_path, args, needle):
    result = run_cli(*args, cwd=tmp_path)
    one_line_error(result, needle)


def test_a_dicom_series_with_a_missing_or_truncated_slice_is_refused(tmp_path):
    image = sitk.GetImageFromArray(scan_array(np.int16, (8, 16, 16)))
    image.SetSpacing((0.8, 0.8, 3.0))
    folder = write_dicom_series(image, tmp_path / "series")
    assert read_scan(str(folder)).GetSize() == (16, 16, 8)   # complete: read as is
    (folder / "004.dcm").unlink()
    with pytest.raises(ExtremeAugError, match=r"not evenly spaced: 6.00 mm .* 3.00 mm apart"):
        read_scan(str(folder))
    cut = folder / "005.dcm"   # a slice file cut short: GDCM leaves it out of the series, a gap again
    (folder / "004.dcm").write_bytes(cut.read_bytes())
    cut.write_bytes(cut.read_bytes()[:-200])
    with pytest.raises(ExtremeAugError, match="not evenly spaced"):
        read_scan(str(folder))


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.pop("preprocessing"), "unknown plane None"),
    (lambda m: m["preprocessing"].update(plane="oblique"), "unknown plane 'oblique'"),
    (lambda m: m["preprocessing"].update(slice_size=10 ** 6), "slice size 1000000"),
    (lambda m: m["preprocessing"].update(template="x"), "intensity template"),
    (lambda m: m["preprocessing"].update(pixel_mm=[0.0, 1.0]), "pixel size"),
    (lambda m: m.update(threshold="high"), "threshold is not a number")])
def test_a_model_with_damaged_metadata_is_refused_in_one_line(tmp_path, random_model, change, needle):
    import onnx

    from extremeaug.inference.segmenter import Segmenter
    from extremeaug.networks.export import METADATA_KEY, with_metadata
    proto = onnx.load(str(random_model))
    metadata = json.loads(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    change(metadata)
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(with_metadata(proto.SerializeToString(), metadata))
    with pytest.raises(ExtremeAugError, match=f"metadata is damaged .*{needle}"):
        Segmenter(damaged)
    scan = write(tmp_path, "v.nii.gz", scan_array())
    one_line_error(run_cli("segment", "--model", damaged, "--image", scan, "--out", tmp_path / "m.nii.gz"), needle)


def test_temporary_files_of_killed_writers_are_swept_by_the_next_writer(tmp_path):
    import os
    import time
    with Project.create(tmp_path / "p") as project:
        case = project.add(str(write(tmp_path, "a.nii.gz", scan_array())), case_id="a")
        folder = tmp_path / "p" / "cases" / "a"
        stale, live = folder / ".scan-1a2b3c.x1y2z3.nrrd", folder / ".label-manual.q9w8e7.nrrd"
        for path in (stale, live):
            path.write_bytes(b"half a file")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))   # left by a writer killed two hours ago
        project.accept("a", str(write(tmp_path, "m.nii.gz", (scan_array() > 500).astype(np.uint8))))
        assert not stale.exists() and live.exists()   # a write in progress elsewhere is left alone
        assert project.case("a").scan == case.scan and project.verify() == []


def test_cpu_out_of_memory_is_one_line_and_writes_nothing(tmp_path, phantoms):
    """A width of 200,000 asks torch's CPU allocator for about 1.3 TB at once: it fails at once."""
    result = run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1], "--out", tmp_path / "m",
                     "--epochs", "1", "--augment", "1", "--width", "200000", "--quiet")
    one_line_error(result, "out of memory", "lower --width")
    assert not (tmp_path / "m").exists()


def test_a_file_as_model_folder_and_a_symlink_loop_as_project_are_one_line(tmp_path, phantoms):
    taken = tmp_path / "model"
    taken.write_text("not a folder")
    one_line_error(run_cli("train", "--image", phantoms[0][0], "--label", phantoms[0][1], "--out", taken,
                           "--epochs", "1", "--augment", "1", "--quiet"), "is a file")
    assert taken.read_text() == "not a folder"
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for command in ("status", "init"):
        one_line_error(run_cli("project", command, tmp_path / "a"), "Symlink loop")
