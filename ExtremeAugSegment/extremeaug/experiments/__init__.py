"""End-to-end runs of the engine: the built-in demo on phantoms, the paper's experiment grid with its
report, and the PNG figures both draw."""
