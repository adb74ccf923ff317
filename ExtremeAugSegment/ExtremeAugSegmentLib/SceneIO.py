"""MRML nodes <-> SimpleITK images, voxel for voxel, with the geometry carried over exactly.

Slicer keeps a volume's geometry in the node (IJK-to-RAS) and leaves the vtkImageData at origin 0, spacing 1;
SimpleITK keeps it in the image, in LPS. The conversion is a sign flip of the first two axes, nothing is
resampled. `slicer.util.arrayFromVolume`/`itkImageFromVolume` would do part of this but go through
`slicer.app` in places, so this module uses only MRML and VTK: it runs in Slicer and in a bare MRML scene
(the slicer-core wheel the tests use).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtkmodules.util import numpy_support

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def imageFromVolumeNode(volumeNode) -> sitk.Image:
    """A scalar volume node (or label map) as a SimpleITK image in its own pixel type and geometry."""
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise ValueError(f"volume {volumeNode.GetName() if volumeNode else None!r} has no image data")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume {volumeNode.GetName()!r} has {imageData.GetNumberOfScalarComponents()} components "
                         "per voxel; a scalar (grey-level) volume is needed")
    nx, ny, nz = imageData.GetDimensions()
    array = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(nz, ny, nx)
    image = sitk.GetImageFromArray(array.copy())
    origin, spacing, directions = volumeGeometry(volumeNode)
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(LPS_TO_RAS @ origin))
    image.SetDirection(tuple((LPS_TO_RAS @ directions).ravel()))
    return image


def volumeGeometry(volumeNode) -> Tuple[np.ndarray, Tuple[float, float, float], np.ndarray]:
    """(RAS origin, spacing, 3x3 RAS direction matrix with one column per IJK axis) of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)
    directions = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    return np.array(volumeNode.GetOrigin()), tuple(volumeNode.GetSpacing()), directions


def updateVolumeNodeFromImage(volumeNode, image: sitk.Image) -> None:
    """Give a volume node the image's voxels and geometry (the node keeps its name, display and ID)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("a 3D scalar image is needed")
    array = np.ascontiguousarray(sitk.GetArrayViewFromImage(image))
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(image.GetSize())
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    imageData.GetPointData().SetScalars(scalars)
    direction = LPS_TO_RAS @ np.array(image.GetDirection()).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, direction[r, c])
    volumeNode.SetIJKToRASDirectionMatrix(matrix)
    volumeNode.SetSpacing(image.GetSpacing())
    volumeNode.SetOrigin(tuple(LPS_TO_RAS @ np.array(image.GetOrigin())))
    volumeNode.SetAndObserveImageData(imageData)


def addVolumeNode(scene, image: sitk.Image, name: str, className: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(className, name)
    updateVolumeNodeFromImage(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def segmentToImage(segmentationNode, segmentId: str, referenceVolumeNode) -> sitk.Image:
    """One segment as a uint8 0/1 image on the reference volume's grid (what a project label is)."""
    if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
        raise ValueError(f"segmentation {segmentationNode.GetName()!r} has no segment {segmentId!r}")
    scene = segmentationNode.GetScene()
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "ExtremeAugSegment export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmapNode, referenceVolumeNode):
            raise ValueError(f"segment {segmentId!r} could not be exported on the grid of "
                             f"{referenceVolumeNode.GetName()!r}")
        mask = imageFromVolumeNode(labelmapNode)
    finally:
        scene.RemoveNode(labelmapNode)
    return sitk.Cast(mask > 0, sitk.sitkUInt8)


def setSegmentFromImage(segmentationNode, mask: sitk.Image, referenceVolumeNode, name: str,
                        color: Tuple[float, float, float], segmentId: Optional[str] = None) -> str:
    """Put a 0/1 mask on the reference volume's grid into a segment (replacing `segmentId`'s contents when
    given); returns the segment's ID."""
    scene = segmentationNode.GetScene()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "ExtremeAugSegment import")
    try:
        binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
        binary.CopyInformation(mask)
        updateVolumeNodeFromImage(labelmapNode, binary)
        _checkSameGrid(labelmapNode, referenceVolumeNode)
        labelmapNode.CopyOrientation(referenceVolumeNode)   # bit-identical geometry: no resampling on export
        segmentation = segmentationNode.GetSegmentation()
        if segmentId and segmentation.GetSegment(segmentId) is not None:
            segmentation.RemoveSegment(segmentId)
        before = set(_segmentIds(segmentationNode))
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode):
            raise ValueError("the mask could not be imported into the segmentation")
        added = [s for s in _segmentIds(segmentationNode) if s not in before]
        if not added:   # an empty mask imports no segment: keep an empty one so the user can draw in it
            added = [segmentation.AddEmptySegment(segmentId or "", name, color)]
    finally:
        scene.RemoveNode(labelmapNode)
    segment = segmentation.GetSegment(added[0])
    segment.SetName(name)
    segment.SetColor(*color)
    return added[0]


def _checkSameGrid(node, referenceNode, tolerance: float = 1e-4) -> None:
    """Geometry read back from a file differs from the node's in the last digits; anything more is a
    mask of another scan."""
    same = node.GetImageData().GetDimensions() == referenceNode.GetImageData().GetDimensions()
    a, b = volumeGeometry(node), volumeGeometry(referenceNode)
    same = same and np.allclose(a[0], b[0], atol=tolerance) and np.allclose(a[1], b[1], atol=tolerance) and \
        np.allclose(a[2], b[2], atol=tolerance)
    if not same:
        raise ValueError(f"the mask is not on the grid of volume {referenceNode.GetName()!r}")


def _segmentIds(segmentationNode) -> list:
    ids = vtk.vtkStringArray()
    segmentationNode.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]
