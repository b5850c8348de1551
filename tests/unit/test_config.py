from __future__ import annotations

from pathlib import Path

import pytest

from warmcache.bootstrap import build, check_kinds
from warmcache.config import load_config, parse_config
from warmcache.errors import ConfigError

CONFIG_DIR = (Path(__file__).resolve().parents[2] / "config").resolve()  # warmcache/data/config


def test_example_service_config_parses() -> None:
    config = load_config(CONFIG_DIR / "service.example.toml", environ={})
    assert config.store.kind == "sqlite" and config.service.listen_port == 8080
    assert config.catalog.path == str(CONFIG_DIR / "flavors.toml")


def test_environment_overrides_with_json_values() -> None:
    config = parse_config(
        {"service": {"listen_port": 8080}},
        environ={
            "WARMCACHE_SERVICE__LISTEN_PORT": "9090",
            "WARMCACHE_STORE__KIND": "sqlite",
            "WARMCACHE_SERVICE__RUN_BUILDS": "false",
            "UNRELATED": "x",
        },
    )
    assert config.service.listen_port == 9090 and config.service.run_builds is False


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"service": {"listen_port": -1, "leader_ttl_s": 0.5, "typo": 1}}, environ={})
    assert len(err.value.problems) == 3
    assert any("listen_port" in p for p in err.value.problems)


def test_unknown_backend_kinds_list_the_valid_ones() -> None:
    config = parse_config({"store": {"kind": "zookeeper"}, "events": {"kind": "kafka"}}, environ={})
    with pytest.raises(ConfigError) as err:
        check_kinds(config)
    assert len(err.value.problems) == 2
    assert "zookeeper" in err.value.problems[0] and "sqlite" in err.value.problems[0]


def test_missing_or_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[service\n")
    with pytest.raises(ConfigError):
        load_config(tmp_path / "bad.toml")


def test_build_assembles_a_working_service(tmp_path: Path) -> None:
    config = parse_config(
        {
            "service": {"prefix": "t"},
            "store": {"path": str(tmp_path / "s.db")},
            "events": {"path": str(tmp_path / "e.db")},
            "catalog": {"path": str(CONFIG_DIR / "flavors.toml")},
        },
        environ={},
    )
    service = build(config)
    try:
        assert [f.name for f in service.catalog.list()] == ["large", "medium", "small"]
        assert service.pools() == []
    finally:
        service.close()


def test_the_production_examples_parse() -> None:
    from warmcache_agent.config import load_agent_config

    config = load_config(CONFIG_DIR / "production.example.toml", environ={})
    check_kinds(config)
    assert (config.store.kind, config.catalog.kind, config.events.kind, config.alerts.kind) == (
        "consul",
        "mongodb",
        "elasticsearch",
        "smtp",
    )
    assert len(config.auth.tokens) == 3 and config.agent_tls is not None
    agent = load_agent_config(CONFIG_DIR / "agent-production.example.toml")
    assert agent.topology().largest_node == 32 and agent.inventory is not None
    assert agent.inventory.advertise.startswith("https://")
    for example in ("agent.example.toml",):
        load_agent_config(CONFIG_DIR / example)
