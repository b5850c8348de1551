"""Acquire: modes as selectors (``modes``), atomic all-or-nothing claims
(``claimer``), the pool index and the acquirer; the claim log, quotas and
holder index they write live in ``warmcache.claims``. Nothing is imported
here: import the module you need."""
