"""The city simulator: drivers and riders exercising a running mesh as real apps would."""
