"""The sample data a clinician can try the whole loop on without their own scans (registered with Slicer's
Sample Data module as "ExtremeAugSegment phantom"): synthetic lumbar-spine phantoms written on the spot,
nothing downloaded. MRML only, so the self-test and pytest load it the same way."""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from extremeaug.data.phantom import STRUCTURES as PHANTOM_STRUCTURES, write_phantoms
from extremeaug.project import Structure

from . import SceneIO
from .Results import VOLUME_ROLE

SAMPLE_NAME = "ExtremeAugSegment phantom"
COLORS = {1: (0.90, 0.62, 0.25), 2: (0.95, 0.90, 0.75), 3: (0.40, 0.60, 0.95)}
STRUCTURES = [Structure(name, COLORS[value], value=value) for value, name in PHANTOM_STRUCTURES.items()]


def loadPhantomSample(scene, folder: str | Path):
    """Two phantoms into the scene, the first with its discs, vertebral bodies and spinal canal delineated
    as three segments -> (labeled volume, its segmentation, unlabeled volume)."""
    (scan0, mask0), (scan1, _) = write_phantoms(Path(folder), 2, structures=True)
    labeled = SceneIO.addVolumeNode(scene, sitk.ReadImage(str(scan0)), "phantom_0")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "phantom_0 delineation")
    segmentation.CreateDefaultDisplayNodes()
    labelmap = sitk.ReadImage(str(mask0))
    for structure in STRUCTURES:
        SceneIO.setSegmentFromImage(segmentation, labelmap == structure.value, labeled, structure.name,
                                    structure.color)
    segmentation.SetNodeReferenceID(VOLUME_ROLE, labeled.GetID())
    unlabeled = SceneIO.addVolumeNode(scene, sitk.ReadImage(str(scan1)), "phantom_1")
    return labeled, segmentation, unlabeled


def registrationArguments(load) -> dict:
    """What `SampleDataLogic.registerCustomSampleDataSource` takes for a source whose data `load` makes.
    Its `SampleDataSource` measures `len(uris)` against fileNames, nodeNames, loadFiles, loadFileTypes and
    checksums (Slicer 5.4 to main), so a source with no download passes empty lists, not None."""
    return dict(category="ExtremeAugSegment", sampleName=SAMPLE_NAME, customDownloader=load,
                uris=[], fileNames=[], nodeNames=[], loadFiles=[], loadFileTypes=[], checksums=[],
                thumbnailFileName=str(Path(__file__).parent.parent / "Resources" / "Icons" / "ExtremeAugSegment.png"))


def registerSampleData() -> None:
    """The phantom in the Sample Data module (needs the Slicer application)."""
    import tempfile

    import SampleData
    import slicer

    def load(source):
        with tempfile.TemporaryDirectory(prefix="ExtremeAugSegment-phantom-") as folder:   # read into memory
            return list(loadPhantomSample(slicer.mrmlScene, folder))

    SampleData.SampleDataLogic.registerCustomSampleDataSource(**registrationArguments(load))
