"""Demand-driven sizing, one feature in one package: what each pool is
asked for (``ledger``, every instance), the forecast and the budget split
(``forecast``, pure), AZ budgets (``budgets``), each pool's target or
tier mix (``sizing``, the leader) and the targets every instance follows
(``targets``). Nothing is imported here: import the module you need."""
