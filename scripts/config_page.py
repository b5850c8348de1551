"""The configuration page (docs/configuration.md), generated from the
pydantic models' fields and descriptions, so that it cannot drift:

    .venv/bin/python scripts/config_page.py > docs/configuration.md

``tests/unit/test_config_sources.py`` fails when the page and the models
disagree."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from warmcache.config import Config

INTRO = """# Configuration

`warmcache serve --config FILE` reads TOML (example:
`config/service.example.toml`). Agents are not configured here: each
publishes its facts and endpoint in the store (the agent's `[inventory]`,
see [the host agent](agent.md)). Every option of every section can be set
from the environment as `WARMCACHE_<SECTION>__<OPTION>` with the option's
type (lists and tables as JSON; a string option, a password included, is
taken as it is), e.g. `WARMCACHE_SERVICE__LISTEN_PORT=9090`; the
environment wins over the file, and a misspelt option is an error. Secrets
(`password`, `token`, `api_key`) are never logged or shown; each can also
come from its `<option>_file` option or from a file `<section>__<option>`
in `WARMCACHE_SECRETS_DIR` (or systemd's `$CREDENTIALS_DIRECTORY`).
Relative paths are relative to the config file. Every problem in a config
is reported at once, and `warmcache config check FILE` tries every backend
with it, one line each ([production](production.md) has the per-backend
TLS and credentials guide).

This page is generated from the configuration's models
(`scripts/config_page.py`); build rules, which live in the store, are on
[their own page](rules.md).
"""


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "default_shown" in extra:
        return f"`{extra['default_shown']}`"  # computed at start
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        return "empty"
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, tuple):
        return "`" + ", ".join(str(v) for v in value) + "`"
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{value}`"


def _item_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a tuple-of-models field (``[[quotas.limits]]``)."""
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        found = _item_model(arg)
        if found is not None:
            return found
    return None


def _table(model: type[BaseModel], prefix: str) -> list[str]:
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    nested: list[str] = []
    for name, field in model.model_fields.items():
        text = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_default(field)} | {text} |")
        item = _item_model(field.annotation)
        if item is not None:
            nested += ["", f"Each `[[{prefix}{name}]]`:", "", *_table(item, "")]
    return rows + nested


def page() -> str:
    out = [INTRO]
    for section, field in Config.model_fields.items():
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) else None
        optional = type(None) in get_args(annotation)
        if optional:  # [agent_tls]: a section only some configs have
            model = _item_model(annotation)
        if model is None or not issubclass(model, BaseModel):
            model = _item_model(annotation)
            assert model is not None, section
            title = f"`[[{section}]]`"
            lines = ["", f"## {title}", ""]
            if field.description:
                lines += [" ".join(field.description.split()), ""]
            lines += _table(model, "")
        else:
            lines = ["", f"## `[{section}]`", ""]
            if optional and field.description:
                lines += [" ".join(field.description.split()), ""]
            elif model.__doc__:
                lines += [" ".join(model.__doc__.split()), ""]
            lines += _table(model, f"{section}.")
        out.append("\n".join(lines))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(page(), end="")
