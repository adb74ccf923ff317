"""Stage 3, training: slices resident on the device (dataset), patch table and on-device augmentation
(augment), losses, the training loop with checkpoints, resume, time budget and validation (train,
checkpoint), progress, several processes (distributed), out of memory (memory) and stop signals (interrupts)."""
