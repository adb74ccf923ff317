"""The sample data a clinician can try the whole loop on without their own scans (registered with Slicer's
Sample Data module as "ExtremeAugSegment phantom"): synthetic lumbar-spine phantoms written on the spot,
nothing downloaded. MRML only, so the self-test and pytest load it the same way."""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from extremeaug.phantom import write_phantoms
from extremeaug.project import Structure

from . import SceneIO
from .Results import VOLUME_ROLE

SAMPLE_NAME = "ExtremeAugSegment phantom"
STRUCTURE = Structure("intervertebral disc", (0.90, 0.62, 0.25))


def loadPhantomSample(scene, folder: str | Path):
    """Two phantoms into the scene, the first with its discs delineated -> (labeled volume, its
    segmentation, unlabeled volume)."""
    (scan0, mask0), (scan1, _) = write_phantoms(Path(folder), 2)
    labeled = SceneIO.addVolumeNode(scene, sitk.ReadImage(str(scan0)), "phantom_0")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "phantom_0 discs")
    segmentation.CreateDefaultDisplayNodes()
    SceneIO.setSegmentFromImage(segmentation, sitk.ReadImage(str(mask0)), labeled, STRUCTURE.name, STRUCTURE.color)
    segmentation.SetNodeReferenceID(VOLUME_ROLE, labeled.GetID())
    unlabeled = SceneIO.addVolumeNode(scene, sitk.ReadImage(str(scan1)), "phantom_1")
    return labeled, segmentation, unlabeled


def registerSampleData() -> None:
    """The phantom in the Sample Data module (needs the Slicer application)."""
    import tempfile

    import SampleData
    import slicer

    def load(source):
        return list(loadPhantomSample(slicer.mrmlScene, tempfile.mkdtemp(prefix="ExtremeAugSegment-phantom-")))

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="ExtremeAugSegment", sampleName=SAMPLE_NAME, customDownloader=load,
        thumbnailFileName=str(Path(__file__).parent.parent / "Resources" / "Icons" / "ExtremeAugSegment.png"))
