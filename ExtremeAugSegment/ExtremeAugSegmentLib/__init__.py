"""The ExtremeAugSegment module's library: Logic (MRML only), SceneIO, TrainingMonitor, InstallLogic,
Parameter and Widget (the two that need the Slicer application), and the SelfTest loop."""
