"""Build rules in the store, at ``<prefix>/rules/<az>/<flavor>`` (DESIGN.md §6).

Every write is validated first; a rule that fails validation raises
``InvalidRule`` and the stored rule is left as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from warmcache.errors import InvalidRule, UnknownFlavor
from warmcache.layout import Keys, RuleRecords
from warmcache.model import BuildRule, is_valid_name
from warmcache.ports import CoordinationStore, FlavorCatalog
from warmcache.views import PrefixView


def parse_rule(data: Mapping[str, Any] | str) -> BuildRule:
    try:
        if isinstance(data, str):
            return BuildRule.model_validate_json(data)
        return BuildRule.model_validate(data)
    except ValidationError as exc:
        raise InvalidRule.from_validation("invalid build rule", exc) from exc


class RuleBook:
    def __init__(self, store: CoordinationStore, keys: Keys, catalog: FlavorCatalog) -> None:
        self._store = store
        self._keys = keys
        self._catalog = catalog
        self._records = RuleRecords(store, keys)

    def put(self, az: str, flavor: str, data: Mapping[str, Any] | str) -> BuildRule:
        if not is_valid_name(az):
            raise InvalidRule(f"invalid AZ name {az!r}")
        if not is_valid_name(flavor) or self._catalog.get(flavor) is None:
            # the path names a flavor that does not exist: 404, like a read of it
            raise UnknownFlavor(flavor, (f.name for f in self._catalog.list()))
        rule = parse_rule(data)
        self._store.put(self._keys.rule(az, flavor), rule.model_dump_json())
        return rule

    def get(self, az: str, flavor: str) -> BuildRule | None:
        return self._records.get(az, flavor)

    def all(self) -> dict[tuple[str, str], BuildRule]:
        return self._records.all()


class RuleView(PrefixView[BuildRule]):
    """The rules as the change feed brings them: (az, flavor) -> rule, and
    the AZs that have any, each a dict lookup."""

    def __init__(self, store: CoordinationStore, keys: Keys) -> None:
        self._rules: dict[tuple[str, str], BuildRule] = {}
        self._azs: Counter[str] = Counter()
        super().__init__(
            store, keys.rules_dir(), lambda _k, value: BuildRule.model_validate_json(value)
        )

    def get(self, az: str, flavor: str) -> BuildRule | None:
        return self._rules.get((az, flavor))

    def has_az(self, az: str) -> bool:
        return self._azs[az] > 0

    def azs(self) -> set[str]:
        with self._lock:
            return {az for az, n in self._azs.items() if n > 0}

    def all(self) -> dict[tuple[str, str], BuildRule]:
        with self._lock:
            return dict(self._rules)

    def _changed(self, key: str, old: BuildRule | None, new: BuildRule | None) -> None:
        az, flavor = Keys.tail(key, 2)
        if old is not None:
            self._azs[az] -= 1
            del self._rules[(az, flavor)]
        if new is not None:
            self._azs[az] += 1
            self._rules[(az, flavor)] = new


def read_rules_file(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``[rules.<az>.<flavor>]`` tables of a TOML file, unvalidated."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRule(f"rules file: {exc}") from exc
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for az, flavors in (data.get("rules") or {}).items():
        for flavor, fields in flavors.items():
            out[(az, flavor)] = dict(fields)
    return out
