"""MongoFlavorCatalog: flavors and images in MongoDB (pymongo), where their
sensitive details (image ids and sources, provider flavor ids) live in
production: one collection of flavors, one of images (unique on ``name`` and
``id``).

Consistency (every flavor names a known image with a small enough
``min_disk_gib``) is checked against what the collections hold before each
write; MongoDB gives no transaction across the two collections here, so two
operators changing a flavor and its image at the same instant could both
pass: the leader refuses to build from a flavor whose image is missing
(a cycle problem), never from a wrong image.

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

from warmcache.errors import ImageInUse, InvalidRequest, StoreError
from warmcache.images import Image, flavor_problems, require_consistent
from warmcache.model import Flavor

T = TypeVar("T")


class MongoFlavorCatalog:
    def __init__(
        self,
        url: str = "",
        *,
        database: str = "warmcache",
        collection: str = "flavors",
        images_collection: str = "images",
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
        self._images = self._client[database][images_collection]
        try:
            self._call(lambda: self._flavors.create_index("name", unique=True))
            self._call(lambda: self._images.create_index("id", unique=True))
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

    def put(self, flavor: Flavor) -> Flavor:
        images = {i.id: i for i in self.images()} if flavor.image_id else {}
        require_consistent(flavor_problems(flavor, images))
        doc = flavor.model_dump(mode="json")
        self._call(lambda: self._flavors.replace_one({"name": flavor.name}, doc, upsert=True))
        return flavor

    @staticmethod
    def _image(doc: dict[str, Any]) -> Image | None:
        try:
            return Image.model_validate({k: v for k, v in doc.items() if k != "_id"})
        except ValidationError:
            return None  # a malformed document is not an image; `images` skips it

    def image(self, image_id: str) -> Image | None:
        doc = self._call(lambda: self._images.find_one({"id": image_id}))
        return self._image(doc) if doc else None

    def images(self) -> list[Image]:
        docs = self._call(lambda: list(self._images.find().sort("id", 1)))
        return [i for i in (self._image(d) for d in docs) if i is not None]

    def put_image(self, image: Image) -> Image:
        users = [f for f in self.list() if f.image_id == image.id]
        require_consistent([p for f in users for p in flavor_problems(f, {image.id: image})])
        doc = image.model_dump(mode="json")
        self._call(lambda: self._images.replace_one({"id": image.id}, doc, upsert=True))
        return image

    def delete_image(self, image_id: str) -> bool:
        users = sorted(f.name for f in self.list() if f.image_id == image_id)
        if users:
            raise ImageInUse(image_id, users)
        done = self._call(lambda: self._images.delete_one({"id": image_id}))
        return bool(done.deleted_count)

    def list(self) -> list[Flavor]:  # last: below it, list is this method
        docs = self._call(lambda: list(self._flavors.find().sort("name", 1)))
        return [f for f in (self._flavor(d) for d in docs) if f is not None]

    def close(self) -> None:
        if self._owns:
            self._client.close()


def parse_flavor(name: str, fields: dict[str, Any]) -> Flavor:
    try:
        return Flavor.model_validate({"name": name, **fields})
    except ValidationError as exc:
        raise InvalidRequest.from_validation(f"invalid flavor {name!r}", exc) from exc
