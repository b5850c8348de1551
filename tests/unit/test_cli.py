from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from warmcache.cli import main


def test_serve_with_a_bad_config_says_what_is_wrong(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[store]\nkind = "zookeeper"\n[service]\nlisten_port = 70000\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "listen_port" in result.output


def test_quickstart_refuses_a_foreign_state_dir(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(
        main, ["quickstart", "--state-dir", str(tmp_path), "--exit-after", "0"]
    )
    assert result.exit_code == 1
    assert "not empty" in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_operator_commands_report_an_unreachable_service() -> None:
    for args in (
        ["--url", "http://127.0.0.1:1", "pools"],
        ["pools", "--url", "http://127.0.0.1:1"],
    ):
        result = CliRunner().invoke(main, args)
        # unavailable (5), said on stderr, no traceback
        assert result.exit_code == 5, result.output
        assert "error: server_unreachable" in result.stderr and result.stdout == ""
        assert "Traceback" not in result.output


def test_rules_validate_offline(tmp_path: Path) -> None:
    good = Path(__file__).resolve().parents[2] / "config" / "rules.toml"
    result = CliRunner().invoke(main, ["rules", "validate", str(good)])
    assert result.exit_code == 0 and "ok az1/small" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"max_instance_per_cycle": 1, "total_instances": 1, "reserve_cap": 3}')
    result = CliRunner().invoke(main, ["rules", "validate", str(bad)])
    assert result.exit_code == 2 and "reserve_cap" in result.stderr
    result = CliRunner().invoke(
        main,
        ["rules", "validate", "-"],
        input='{"max_instance_per_cycle": 1, "total_instances": 2}',
    )
    assert result.exit_code == 0


def test_the_pools_table_shows_tiers_only_when_a_pool_has_them() -> None:
    from rich.console import Console

    from warmcache.cli.base import _pools_table

    def text(pools: list[dict[str, object]]) -> str:
        console = Console(width=200, record=True)
        console.print(_pools_table(pools))
        return console.export_text()

    plain = {
        "az": "az1", "flavor": "small", "target": 2, "ready": 2, "reserved": 0,
        "building": 0, "stale": 0, "ready_by_rack": {"r1": 2},
        "standby": {"running": 2}, "tier_targets": {"running": 2},
    }  # fmt: skip
    assert "tiers" not in text([plain])
    tiered = {
        **plain,
        "standby": {"running": 1, "saved": 1},
        "tier_targets": {"running": 1, "saved": 1},
    }
    out = text([plain, tiered])
    assert "tiers held/target" in out and "saved 1/1" in out
