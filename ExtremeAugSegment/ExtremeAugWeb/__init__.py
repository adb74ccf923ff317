"""The labeling station in a browser (`extremeaug web`): trame-slicer's MRML scene, views and segment editor,
the Slicer module's scene logic (ExtremeAugSegmentLib) and the project API, nothing else.

access (users, tokens) -> transfer (uploads, downloads) -> station (what the buttons do) -> page (widgets)
-> server (wiring, the access check on every request).
"""
