"""What the package ships besides code (``warmcache/data/``): the example
configs and the dashboards, found through ``importlib.resources``, so
``warmcache quickstart`` and ``warmcache dashboards import`` work from an
installed wheel as from a checkout (where ``config/`` and ``dashboards/``
point here)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_dir(name: str) -> Path:
    """``config`` or ``dashboards``: a directory on disk (wheels install
    unzipped; a zipped install is refused with this message)."""
    found = files("warmcache").joinpath("data", name)
    path = Path(str(found))
    if not path.is_dir():
        raise FileNotFoundError(
            f"warmcache's {name}/ is not on disk here ({found}): "
            "install the package unzipped (pip does)"
        )
    return path


def config_dir() -> Path:
    return data_dir("config")


def dashboards_dir() -> Path:
    return data_dir("dashboards")
