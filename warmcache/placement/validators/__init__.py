"""Hard rules: a host that fails one is not a candidate."""
