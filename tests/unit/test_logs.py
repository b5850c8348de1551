"""Log lines: level and logger names, text or JSON, and the work they belong
to (a build cycle's token, a claim's id), also from worker threads."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from tests.fakes import FakeAgent
from warmcache.errors import AgentUnavailable, NoCapacity
from warmcache.logs import ContextFilter, log_context, setup_logging
from warmcache.ports import VmSpec
from warmcache.service import WarmCache


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_text_and_json_lines_name_level_logger_and_context() -> None:
    out = io.StringIO()
    setup_logging("INFO", "text", out)
    log = logging.getLogger("warmcache.test")
    with log_context(cycle=4711):
        log.warning("built %d", 3)
    log.debug("not at INFO")
    [line] = out.getvalue().splitlines()
    assert line.endswith(" WARNING warmcache.test cycle=4711: built 3")

    out = io.StringIO()
    setup_logging("debug", "json", out)
    with log_context(claim="c-1"):
        log.info("claimed")
    log.debug("plain")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert {k: first[k] for k in ("level", "logger", "message", "claim")} == {
        "level": "INFO",
        "logger": "warmcache.test",
        "message": "claimed",
        "claim": "c-1",
    }
    assert "time" in first and "context" not in first and "claim" not in second
    with pytest.raises(ValueError, match="log level"):
        setup_logging("LOUD", "text")


class Captured(logging.Handler):
    """Records as the service's handler sees them (with the context filter)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("warmcache")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_every_line_of_a_build_cycle_carries_its_token(
    service: WarmCache, agents: dict[str, FakeAgent], captured: Captured
) -> None:
    flaky = next(iter(agents.values()))

    def once(spec: VmSpec) -> None:
        flaky.before_create = None
        raise AgentUnavailable(flaky.endpoint, "connection reset")  # retried: a warning

    flaky.before_create = once
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 6, "total_instances": 6, "min_fault_domain": 3}
    )
    report = service.run_cycle()
    assert report is not None and report.built[("az1", "small")] == 6
    lines = [r for r in captured.records if r.name.startswith("warmcache.builders")]
    # The per-VM lines come from the cycle's worker threads.
    assert {r.threadName for r in lines} - {"MainThread"}
    assert any(r.levelno == logging.WARNING and "Retrying" in r.getMessage() for r in lines)
    assert sum("vm.build_finished" in r.getMessage() for r in lines) == 6
    [elected] = service.events.recent(1, "leader.elected")
    assert {getattr(r, "cycle", None) for r in captured.records} == {elected.fields["token"]}


def test_the_lines_of_an_acquisition_carry_its_claim_id(
    service: WarmCache, captured: Captured
) -> None:
    service.rules.put(
        "az1", "small", {"max_instance_per_cycle": 3, "total_instances": 3, "min_fault_domain": 3}
    )
    service.run_cycle()
    captured.records.clear()
    with pytest.raises(NoCapacity):
        service.acquire("small", "az1", 5, "rack-aware", claim_id="job-42")
    with pytest.raises(NoCapacity):
        service.acquire("small", "az1", 4, "best-effort")
    failed = [r for r in captured.records if "acquisition of" in r.getMessage()]
    assert getattr(failed[0], "claim", None) == "job-42"
    anonymous = getattr(failed[1], "claim", "")
    assert isinstance(anonymous, str) and len(anonymous) == 32  # a fresh id per request


@pytest.mark.parametrize("command", ["serve", "agent", "proxy"])
def test_every_process_takes_the_log_options(command: str) -> None:
    from warmcache.cli import main
    from warmcache_agent.daemon import main as agent_main
    from warmcache_agent.proxy import main as proxy_main

    cli: Any = {"serve": main, "agent": agent_main, "proxy": proxy_main}[command]
    args = ["serve", "--help"] if command == "serve" else ["--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0
    assert "--log-level" in result.output and "--log-format [text|json]" in result.output
