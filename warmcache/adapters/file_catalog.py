"""FileFlavorCatalog: flavors and images in a TOML file (the embedded default).

    [images.debian-12]
    source = "https://images.example.com/debian-12-genericcloud-amd64.qcow2"
    sha256 = "5b1c..."            # of the file at source, checked on every host
    format = "qcow2"              # or "raw"
    size_bytes = 330692608
    min_disk_gib = 2
    # [images.debian-12.boot]     # images without a bootloader of their own
    # kernel = { source = "...", sha256 = "...", size_bytes = ... }

    [flavors.small]
    vcpus = 2
    memory_mib = 2048
    disk_gib = 20
    image_id = "debian-12"

A relative ``source`` path is taken from the file's own folder. An invalid
entry, a flavor naming an unknown image or a root disk below its image's
``min_disk_gib`` is a ``ConfigError`` naming every problem, so a typo never
silently shrinks the catalog.

Several service instances may share the file: it is read again when it
changes (one ``stat`` per call), and each change is written under an
exclusive lock on ``<file>.lock`` after reading the newest version, then
renamed into place, so two writers never lose each other's change.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from warmcache.errors import ConfigError, ImageInUse
from warmcache.images import Image, catalog_problems, require_consistent
from warmcache.model import Flavor

T = TypeVar("T")
log = logging.getLogger(__name__)


class FileFlavorCatalog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._flavors: dict[str, Flavor] = {}
        self._images: dict[str, Image] = {}
        self._load()

    # --- reading ---------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _load(self) -> None:
        stamp = self._stamp()
        try:
            data = tomllib.loads(self.path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError([f"flavor catalog {self.path}: no such file"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"flavor catalog {self.path}: {exc}"]) from exc
        problems: list[str] = []
        images: dict[str, Image] = {}
        for image_id, fields in (data.get("images") or {}).items():
            try:
                images[image_id] = Image.model_validate(self._resolved({"id": image_id, **fields}))
            except ValidationError as exc:
                problems += _errors(f"image {image_id}", exc)
        flavors: dict[str, Flavor] = {}
        for name, fields in (data.get("flavors") or {}).items():
            try:
                flavors[name] = Flavor.model_validate({"name": name, **fields})
            except ValidationError as exc:
                problems += _errors(f"flavor {name}", exc)
        problems += catalog_problems(flavors, images)
        if problems:
            raise ConfigError([f"flavor catalog {self.path}: {p}" for p in problems])
        self._flavors, self._images, self._seen = flavors, images, stamp

    def _resolved(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Relative source paths are the catalog file's neighbours."""

        def absolute(source: object) -> object:
            relative = isinstance(source, str) and source and not source.startswith("/")
            if relative and "://" not in str(source):
                return str(self.path.parent / str(source))
            return source

        out = {**fields, "source": absolute(fields.get("source"))}
        boot = fields.get("boot")
        if isinstance(boot, dict):
            out["boot"] = {
                **boot,
                **{
                    k: {**v, "source": absolute(v.get("source"))}
                    for k, v in boot.items()
                    if k in ("kernel", "initrd") and isinstance(v, dict)
                },
            }
        return out

    def _fresh(self) -> None:
        """Read the file again if another writer changed it. A changed file
        that no longer loads keeps the last good catalog (and says so on
        the next write, which reloads strictly)."""
        if self._stamp() != self._seen:
            with self._lock:
                if self._stamp() != self._seen:
                    try:
                        self._load()
                    except ConfigError as exc:
                        log.error("keeping the last good catalog: %s", exc)
                        self._seen = self._stamp()

    def get(self, name: str) -> Flavor | None:
        self._fresh()
        return self._flavors.get(name)

    def image(self, image_id: str) -> Image | None:
        self._fresh()
        return self._images.get(image_id)

    def images(self) -> list[Image]:
        self._fresh()
        images = self._images
        return [images[i] for i in sorted(images)]

    def list(self) -> list[Flavor]:  # last of the readers: below, list is this method
        self._fresh()
        flavors = self._flavors
        return [flavors[n] for n in sorted(flavors)]

    # --- writing ---------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The newest file, under an exclusive lock, for one change."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._load()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _change(
        self,
        flavors: dict[str, Flavor],
        images: dict[str, Image],
        result: Callable[[], T],
    ) -> T:
        require_consistent(catalog_problems(flavors, images))
        self._write(flavors, images)
        self._flavors, self._images, self._seen = flavors, images, self._stamp()
        return result()

    def put(self, flavor: Flavor) -> Flavor:
        """Add or replace a flavor and rewrite the file (atomically)."""
        with self._writing():
            return self._change(
                {**self._flavors, flavor.name: flavor}, dict(self._images), lambda: flavor
            )

    def put_image(self, image: Image) -> Image:
        with self._writing():
            return self._change(
                dict(self._flavors), {**self._images, image.id: image}, lambda: image
            )

    def delete_image(self, image_id: str) -> bool:
        with self._writing():
            if image_id not in self._images:
                return False
            users = sorted(f.name for f in self._flavors.values() if f.image_id == image_id)
            if users:
                raise ImageInUse(image_id, users)
            images = {k: v for k, v in self._images.items() if k != image_id}
            return self._change(dict(self._flavors), images, lambda: True)

    def _write(self, flavors: dict[str, Flavor], images: dict[str, Image]) -> None:
        lines = ["# warmcache flavor catalog (written by warmcache)"]
        lines += ["\n" + image_toml(images[i]).rstrip("\n") for i in sorted(images)]
        for name in sorted(flavors):
            lines.append(f"\n[flavors.{name}]")
            doc = flavors[name].model_dump(mode="json", exclude={"name"})
            lines += [f"{key} = {_toml(value)}" for key, value in doc.items()]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    def close(self) -> None:
        pass  # the file is read whole and not held open


def image_toml(image: Image) -> str:
    """``image`` as its table of a catalog file."""
    doc = image.model_dump(mode="json", exclude={"id"}, exclude_none=True)
    return (
        "\n".join([f"[images.{image.id}]", *(f"{k} = {_toml(v)}" for k, v in doc.items())]) + "\n"
    )


def _toml(value: Any) -> str:
    """A TOML value: JSON's strings, numbers, booleans and arrays are TOML's;
    tables become inline tables."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _errors(what: str, exc: ValidationError) -> list[str]:
    return [
        f"{what}: {'.'.join(map(str, e['loc']))}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    ]
