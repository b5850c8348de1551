"""Who holds what, in the store: the claim log (``claim_log``), the quota
limits and counters (``quota_limits``, ``quotas``) and the holder index
(``held``). Acquisition writes them in its claims, a release takes them
back, the leader's sweeps expire them; so they sit below all three.
Nothing is imported here: import the module you need (the client's wire
models reach ``quota_limits`` without loading the rest)."""
