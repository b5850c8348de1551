"""The HTTP API reference page (docs/api-reference.md), generated from the
OpenAPI document every instance serves at /v1/openapi.json, so that it
cannot drift:

    .venv/bin/python scripts/api_page.py > docs/api-reference.md

``tests/unit/test_openapi.py`` fails when the page and the document
disagree."""

from __future__ import annotations

from typing import Any

from warmcache.web.openapi import document

INTRO = """# HTTP API reference

Every route, generated from the OpenAPI document an instance serves at
`/v1/openapi.json` (`scripts/api_page.py`): its summary, request body and
answers. What the routes mean together (claims, errors, deadlines,
authentication) is on [the HTTP API page](api.md).
"""


def _ref(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return f"`{ref.rsplit('/', 1)[1]}`"
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        inner = _ref(schema["items"])
        return f"list of {inner}" if inner else "list"
    return f"`{schema.get('type', 'object')}`"


def _body(content: dict[str, Any] | None) -> str:
    if not content:
        return ""
    for media, spec in sorted(content.items()):
        return f"{_ref(spec.get('schema'))} ({media})"
    return ""


def page() -> str:
    doc = document("reference")
    lines = [INTRO]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            lines += ["", f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                lines += [" ".join(str(op["summary"]).split()), ""]
            params = [
                f"`{p['name']}` ({p['in']})"
                for p in op.get("parameters", [])
                if isinstance(p, dict) and "name" in p
            ]
            if params:
                lines += ["Parameters: " + ", ".join(params) + ".", ""]
            body = op.get("requestBody")
            if isinstance(body, dict):
                lines += [f"Request body: {_body(body.get('content'))}.", ""]
            lines += ["| status | answer |", "| --- | --- |"]
            for status, answer in op.get("responses", {}).items():
                what = " ".join(str(answer.get("description", "")).split()).replace("|", "\\|")
                shape = _body(answer.get("content"))
                lines.append(f"| {status} | {what}{' ' + shape if shape else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(page(), end="")
