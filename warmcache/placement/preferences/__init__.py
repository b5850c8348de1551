"""Soft rules: each scores a host in [0, 1]; higher weight outranks all lower
weights combined (the pipeline compares score tuples in weight order)."""
