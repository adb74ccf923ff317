"""Stage 5, evaluation: Dice, HD95, ASSD and detection per structure (metrics) and the one rule for a mean over
cases (stats, free of numpy so records can import it)."""
