"""``txns()`` for a store without nested transactions (Consul): merge the
batch into as few plain transactions as fit, and when one fails, use the
current state it reports to keep only the transactions whose compares still
hold, then try again; a transaction whose compare fails is reported failed
on its own. Every round removes at least one transaction from the batch, so
a batch of n takes at most n + 1 round trips, and one when nothing
conflicts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from warmcache.ports import Compare, KeyValue, Op, Txn, TxnResult

TxnFn = Callable[[Sequence[Compare], Sequence[Op]], TxnResult]


def check_disjoint(batch: Sequence[Txn]) -> None:
    seen: set[str] = set()
    for txn in batch:
        keys = txn.keys()
        if keys & seen:
            raise ValueError(f"transactions of one batch write the same keys: {keys & seen}")
        seen |= keys


def merged_txns(
    txn: TxnFn, batch: Sequence[Txn], max_ops: int, ops_of: Callable[[Txn], int]
) -> list[TxnResult]:
    """``ops_of``: how many store operations one transaction needs (groups
    are packed up to ``max_ops``; a transaction larger than that is sent on
    its own and the store reports what it thinks of it)."""
    check_disjoint(batch)
    results: list[TxnResult | None] = [None] * len(batch)
    pending = list(range(len(batch)))
    alone = False  # after a failure the state could not explain: one at a time
    while pending:
        group: list[int] = []
        used = 0
        for i in pending:
            need = ops_of(batch[i])
            if group and (alone or used + need > max_ops):
                break
            group.append(i)
            used += need
        reply = txn(
            [c for i in group for c in batch[i].compares],
            [op for i in group for op in batch[i].success],
        )
        if reply.succeeded:
            for i in group:
                results[i] = TxnResult(True, reply.revision)
        elif len(group) == 1:
            results[group[0]] = reply
        else:
            failed = [i for i in group if not _holds(batch[i], reply.current)]
            for i in failed:
                results[i] = TxnResult(False, reply.revision, _current(batch[i], reply.current))
            alone = not failed
        pending = [i for i in pending if results[i] is None]
    return [r for r in results if r is not None]


def _holds(txn: Txn, current: Mapping[str, KeyValue | None]) -> bool:
    return all(c.holds(current[c.key]) for c in txn.compares if c.key in current)


def _current(txn: Txn, current: Mapping[str, KeyValue | None]) -> dict[str, KeyValue | None]:
    return {c.key: current[c.key] for c in txn.compares if c.key in current}
