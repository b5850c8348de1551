"""FileFlavorCatalog: flavors from a TOML file (the embedded default).

    [flavors.small]
    vcpus = 2
    memory_mib = 2048
    disk_gib = 20
    image_id = "debian-12-genericcloud"

The file is read once at construction; an invalid entry is a ``ConfigError``
naming every bad flavor, so a typo never silently shrinks the catalog.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from pydantic import ValidationError

from warmcache.errors import ConfigError
from warmcache.model import Flavor


class FileFlavorCatalog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            data = tomllib.loads(self.path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError([f"flavor catalog {self.path}: no such file"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"flavor catalog {self.path}: {exc}"]) from exc
        problems: list[str] = []
        self._flavors: dict[str, Flavor] = {}
        for name, fields in (data.get("flavors") or {}).items():
            try:
                self._flavors[name] = Flavor.model_validate({"name": name, **fields})
            except ValidationError as exc:
                problems += [
                    f"flavor {name}: {'.'.join(map(str, e['loc']))}: {e['msg']}"
                    for e in exc.errors()
                ]
        if problems:
            raise ConfigError(problems)

    def put(self, flavor: Flavor) -> Flavor:
        """Add or replace a flavor and rewrite the file (atomically)."""
        self._flavors[flavor.name] = flavor
        lines = ["# warmcache flavor catalog (written by `warmcache flavors set`)"]
        for f in self.list():
            lines.append(f"\n[flavors.{f.name}]")
            for key, value in f.model_dump(mode="json", exclude={"name"}).items():
                lines.append(f"{key} = {json.dumps(value)}")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.path)
        return flavor

    def get(self, name: str) -> Flavor | None:
        return self._flavors.get(name)

    def list(self) -> list[Flavor]:
        return [self._flavors[n] for n in sorted(self._flavors)]

    def close(self) -> None:
        pass  # the file is read whole and not held open
