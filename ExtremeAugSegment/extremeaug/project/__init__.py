"""The labeling project: the bootstrap loop (label one scan, train, segment, correct, retrain) as a
crash-safe store (SQLite registry + files) with a background training worker.

store (registry) -> cases (scans, labels, split) -> runs + worker (background training)
-> versions (publish, scores) -> suggest (segment, uncertainty, next case) -> status, cli.
"""
