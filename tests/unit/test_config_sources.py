"""Where configuration comes from: the file, the environment (every option
of every section), secret files and the secrets directory; and where
secrets never go (repr, str, errors, logs)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from warmcache.config import Config, QuotaLimit, parse_config
from warmcache.errors import ConfigError

SECTIONS = ["service", "store", "catalog", "events", "alerts", "demand", "quotas"]
# Options that only validate together with another one.
COMPANIONS: dict[tuple[str, str], dict[str, str]] = {
    ("store", "cert"): {"key": "/k.pem"},
    ("store", "key"): {"cert": "/c.pem"},
}


def a_value(model: type[BaseModel], option: str) -> tuple[str, Any]:
    """A value for ``option`` other than its default, as the environment
    spells it, and what the config must then hold."""
    field = model.model_fields[option]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int | float):
        for candidate in (default + 1, default / 2, default * 2 + 1):
            value = type(default)(candidate)
            try:
                model.model_validate({option: value})
            except ValueError:
                continue
            if value != default:
                return str(value), value
        raise AssertionError(f"no value for {option}")
    if default is None and option.endswith("_s"):  # an optional duration
        return "3600", 3600.0
    if isinstance(default, SecretStr):
        return "123456", "123456"  # numeric-looking: still a string
    if option == "limits":
        limit = {"requester": "ci", "vms_per_window": 10}
        return json.dumps([limit]), (QuotaLimit(**limit),)  # type: ignore[arg-type]
    if isinstance(default, tuple):
        return json.dumps(["ops@example.com"]), ("ops@example.com",)
    if option in {"path", "spool_dir", "ca", "cert", "key", "cert_key"} or option.endswith("_file"):
        return "/etc/warmcache/x", "/etc/warmcache/x"
    return f"from-env-{option}", f"from-env-{option}"


CASES = [
    (section, option)
    for section in SECTIONS
    for option in Config.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
    if not option.endswith("_file")  # these read a file: tested below
]


@pytest.mark.parametrize(("section", "option"), CASES, ids=[f"{s}.{o}" for s, o in CASES])
def test_every_option_can_come_from_the_environment(section: str, option: str) -> None:
    model: type[BaseModel] = Config.model_fields[section].annotation  # type: ignore[assignment]
    raw, expected = a_value(model, option)
    environ = {f"WARMCACHE_{section.upper()}__{option.upper()}": raw}
    for other, value in COMPANIONS.get((section, option), {}).items():
        environ[f"WARMCACHE_{section.upper()}__{other.upper()}"] = value
    got = getattr(getattr(parse_config({}, environ=environ), section), option)
    if isinstance(got, SecretStr):
        got = got.get_secret_value()
    assert got == expected


def test_the_environment_wins_over_the_file_and_reaches_auth_and_agent_tls() -> None:
    config = parse_config(
        {"service": {"listen_port": 8080}, "alerts": {"password": "from-file"}},
        environ={
            "WARMCACHE_SERVICE__LISTEN_PORT": "9090",
            "WARMCACHE_ALERTS__PASSWORD": "123456",
            "WARMCACHE_AUTH__TOKENS": json.dumps([{"name": "ci", "role": "admin", "token": "t"}]),
            "WARMCACHE_AGENT_TLS__CERT": "/etc/wc/c.pem",
            "WARMCACHE_AGENT_TLS__KEY": "/etc/wc/k.pem",
            "WARMCACHE_AGENT_TLS__CA": "/etc/wc/ca.pem",
            "WARMCACHE_URL": "http://not-a-section",  # the CLI's own variables are left alone
        },
    )
    assert config.service.listen_port == 9090
    assert config.alerts.password.get_secret_value() == "123456"
    assert config.auth.tokens[0].name == "ci" and config.auth.tokens[0].role == "admin"
    assert config.agent_tls is not None and config.agent_tls.ca == "/etc/wc/ca.pem"


def test_a_misspelt_variable_is_an_error_not_ignored() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({}, environ={"WARMCACHE_SERVICE__LISTEN_PROT": "9090"})
    assert err.value.problems == ["service.listen_prot: Extra inputs are not permitted"]


def test_secrets_from_files_and_from_the_secrets_directory(tmp_path: Path) -> None:
    (tmp_path / "smtp").write_text("from-a-file\n")
    secrets = tmp_path / "credentials"
    secrets.mkdir()
    (secrets / "events__api_key").write_text("from-the-directory")
    (secrets / "alerts__password").write_text("ignored: alerts.password_file is given")
    config = parse_config(
        {"alerts": {"password_file": "smtp"}},  # relative to the config file
        base=tmp_path,
        environ={"CREDENTIALS_DIRECTORY": str(secrets)},  # systemd's LoadCredential=
    )
    assert config.alerts.password.get_secret_value() == "from-a-file"
    assert config.events.api_key.get_secret_value() == "from-the-directory"
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"alerts": {"password": "x", "password_file": str(tmp_path / "smtp")}}, environ={}
        )
    assert "password and password_file: give one of them" in err.value.problems[0]
    with pytest.raises(ConfigError) as err:
        parse_config({"store": {"token_file": str(tmp_path / "missing")}}, environ={})
    assert "token_file: cannot read" in err.value.problems[0]


SECRET = "s3cr3t-4471"


def test_secrets_never_show_in_repr_errors_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from warmcache.bootstrap import build

    data: dict[str, Any] = {
        "store": {"path": str(tmp_path / "s.db"), "password": SECRET},
        "events": {"path": str(tmp_path / "e.db")},
        "catalog": {"path": str(Path(__file__).parents[2] / "config" / "flavors.toml")},
        "alerts": {
            "kind": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": 9,
            "username": "wc",
            "password": SECRET,
            "recipients": ["ops@example.com"],
        },
        "auth": {"tokens": [{"name": "ci", "token": SECRET}]},
    }
    config = parse_config(data, environ={})
    for text in (repr(config), str(config), config.model_dump_json()):
        assert SECRET not in text
    with pytest.raises(ConfigError) as err:  # a bad value beside a secret
        parse_config({**data, "alerts": {**data["alerts"], "smtp_port": SECRET}}, environ={})
    assert SECRET not in str(err.value) and SECRET not in repr(err.value.problems)
    caplog.set_level(logging.DEBUG)
    service = build(config)
    try:
        service.alerts.alert("a subject", "the SMTP server is not there: this send fails")
        service.alerts.flush(2)  # type: ignore[attr-defined]
    finally:
        service.close()
    assert caplog.records  # the failed send was logged...
    assert all(SECRET not in r.getMessage() and SECRET not in str(r.args) for r in caplog.records)


def test_the_configuration_page_is_what_the_models_say() -> None:
    root = Path(__file__).parents[2]
    spec = importlib.util.spec_from_file_location("config_page", root / "scripts/config_page.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    reference = (root / "docs" / "configuration.md").read_text()
    assert reference == generator.page(), (
        "regenerate: .venv/bin/python scripts/config_page.py > docs/configuration.md"
    )


def test_the_docs_document_every_option() -> None:
    reference = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [
        f"{section}.{option}"
        for section, option in CASES
        if f"`{section}.{option}`" not in reference and f"`{option}`" not in reference
    ]
    assert missing == []
