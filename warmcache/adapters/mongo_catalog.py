"""MongoFlavorCatalog: flavors in MongoDB (pymongo), where their sensitive
details (image ids, provider flavor ids) live in production.

NOT tested against a live MongoDB here (none can be installed on these
machines): it runs the catalog contract suite when
``WARMCACHE_TEST_MONGODB=mongodb://...`` is set. Authentication comes with
the connection string (``mongodb://user:pass@host/?authSource=admin``). A
unique index on ``name`` is created at start. Driver errors become
``StoreError``; a client passed in is never closed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from warmcache.errors import InvalidRequest, StoreError
from warmcache.model import Flavor

T = TypeVar("T")


class MongoFlavorCatalog:
    def __init__(
        self,
        url: str = "",
        *,
        database: str = "warmcache",
        collection: str = "flavors",
        client: Any = None,
        timeout_ms: int = 5000,
        **client_options: Any,
    ) -> None:
        """``client_options`` go to ``pymongo.MongoClient`` as they are
        (``username``, ``password``, ``authSource``, ``tls``, ``tlsCAFile``,
        ``tlsCertificateKeyFile``...)."""
        import pymongo

        self._errors = pymongo.errors.PyMongoError
        self._owns = client is None
        self._client = client or pymongo.MongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, **client_options
        )
        self._flavors = self._client[database][collection]
        try:
            self._call(lambda: self._flavors.create_index("name", unique=True))
        except StoreError:
            self.close()  # ours to close: the caller never gets this object
            raise

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except self._errors as exc:
            raise StoreError(f"mongodb flavor catalog: {exc}") from exc

    @staticmethod
    def _flavor(doc: dict[str, Any]) -> Flavor | None:
        doc = {k: v for k, v in doc.items() if k != "_id"}
        try:
            return Flavor.model_validate(
                {**doc, "extra_disks_gib": tuple(doc.get("extra_disks_gib", ()))}
            )
        except ValidationError:
            return None  # a malformed document is not a flavor; `list` skips it

    def get(self, name: str) -> Flavor | None:
        doc = self._call(lambda: self._flavors.find_one({"name": name}))
        return self._flavor(doc) if doc else None

    def list(self) -> list[Flavor]:
        docs = self._call(lambda: list(self._flavors.find().sort("name", 1)))
        return [f for f in (self._flavor(d) for d in docs) if f is not None]

    def put(self, flavor: Flavor) -> Flavor:
        doc = flavor.model_dump(mode="json")
        self._call(lambda: self._flavors.replace_one({"name": flavor.name}, doc, upsert=True))
        return flavor

    def close(self) -> None:
        if self._owns:
            self._client.close()


def parse_flavor(name: str, fields: dict[str, Any]) -> Flavor:
    try:
        return Flavor.model_validate({"name": name, **fields})
    except ValidationError as exc:
        raise InvalidRequest.from_validation(f"invalid flavor {name!r}", exc) from exc
