"""The client and the agent load no server (issue 30): each imported in a
fresh interpreter, and what it pulled into ``sys.modules`` checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent" / "warmcache_agent"
SERVER = ("flask", "waitress", "werkzeug", "warmcache.service", "warmcache.web")


def loaded(*modules: str) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def heavy(found: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in found if any(m == n or m.startswith(n + ".") for n in names))


def test_importing_warmcache_loads_nothing_until_a_name_is_used() -> None:
    found = loaded("warmcache")
    assert heavy(found, (*SERVER, "httpx", "warmcache.client")) == []
    code = "import sys, warmcache; warmcache.NoCapacity; print('warmcache.service' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # an error class does not load the service


def test_the_client_loads_no_server() -> None:
    handlers = ("warmcache.actions", "warmcache.context", "warmcache.acquire.claimer")
    assert heavy(loaded("warmcache.client"), (*SERVER, *handlers)) == []


def test_the_agent_loads_neither_a_server_nor_an_http_client() -> None:
    assert heavy(loaded("warmcache_agent", "warmcache_agent.numa"), (*SERVER, "httpx")) == []


@pytest.mark.parametrize(
    "module", sorted(p.stem for p in AGENT.glob("*.py") if not p.stem.startswith("__"))
)
def test_no_agent_module_loads_the_server(module: str) -> None:
    assert heavy(loaded(f"warmcache_agent.{module}"), SERVER) == []
