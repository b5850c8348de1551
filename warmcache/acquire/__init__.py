"""Acquire: modes as selectors (``modes``), atomic all-or-nothing claims
(``claimer``), the claim log, quotas, the pool index and the acquirer.
Nothing is imported here: import the module you need (the client's wire
models reach ``quota_limits`` without loading the claimer)."""
