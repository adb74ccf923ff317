"""Stage 1, scans in: reading images and masks (NIfTI, NRRD, MHA, .seg.nrrd, DICOM) behind hostile-file
checks (guard), masks as one binary array per structure (labels), orientation, slicing plane, slice grid and
intensity matching (preprocess, histogram), atomic image writes, and the synthetic phantom."""
