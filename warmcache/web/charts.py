"""The dashboard's charts, drawn here as inline SVG: no script, no
external asset, nothing to fetch. Every text that reaches the SVG is
escaped (names come from the store)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from warmcache.pool_history import Level

# One colour per series, the same on every chart.
COLOURS = {
    "ready": "#2f7d4f",
    "reserved": "#7fb77e",
    "building": "#e0a030",
    "held": "#4a6fa5",
    "booked": "#4a6fa5",
    "free": "#cfe3d4",
    "drained": "#9aa1a9",
    "unreachable": "#b3261e",
    "running": "#2f7d4f",
    "paused": "#e0a030",
    "saved": "#8e6cb0",
}
SERIES = ("ready", "reserved", "building", "held")


def _svg(width: int, height: int, body: str, label: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
        f"<title>{escape(label)}</title>{body}</svg>"
    )


def _ago(seconds: float) -> str:
    if seconds >= 3600:
        return f"-{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"-{seconds / 60:.0f} min"
    return f"-{seconds:.0f} s"


def levels(samples: Sequence[Level], label: str, width: int = 320, height: int = 90) -> Markup:
    """The pool's VMs over time, stacked: ready, reserved, building, held."""
    if len(samples) < 2:
        return _svg(
            width,
            height,
            f'<text x="4" y="{height / 2:.0f}" font-size="11" fill="#6a737d">'
            "collecting (one sample a minute)</text>",
            label,
        )
    top = max(max(s.ready + s.reserved + s.building + s.held for s in samples), 1)
    t0, t1 = samples[0].at, samples[-1].at
    span = max(t1 - t0, 1e-9)
    plot_h = height - 14

    def x(at: float) -> float:
        return 30 + (width - 34) * (at - t0) / span

    def y(v: float) -> float:
        return 2 + plot_h * (1 - v / top)

    body = []
    below = [0.0] * len(samples)
    for name in SERIES:
        above = [b + getattr(s, name) for b, s in zip(below, samples, strict=True)]
        points = [f"{x(s.at):.1f},{y(a):.1f}" for s, a in zip(samples, above, strict=True)]
        back = [
            f"{x(s.at):.1f},{y(b):.1f}"
            for s, b in zip(reversed(samples), reversed(below), strict=True)
        ]
        body.append(
            f'<polygon class="series-{name}" points="{" ".join(points + back)}" '
            f'fill="{COLOURS[name]}" fill-opacity="0.9"/>'
        )
        below = above
    body.append(
        f'<text x="0" y="10" font-size="10" fill="#6a737d">{top}</text>'
        f'<text x="0" y="{plot_h + 2}" font-size="10" fill="#6a737d">0</text>'
        f'<text x="30" y="{height - 1}" font-size="10" fill="#6a737d">{_ago(t1 - t0)}</text>'
        f'<text x="{width - 4}" y="{height - 1}" font-size="10" fill="#6a737d" '
        f'text-anchor="end">now</text>'
    )
    return _svg(width, height, "".join(body), label)


@dataclass(frozen=True)
class Bar:
    label: str
    parts: Mapping[str, float]  # series -> amount, drawn left to right
    note: str = ""


def bars(
    rows: Sequence[Bar],
    label: str,
    width: int = 520,
    row_h: int = 16,
    label_w: int = 130,
    note_w: int = 96,
) -> Markup:
    """Horizontal stacked bars, one per row (racks' booked and free vCPUs,
    requesters' VMs), scaled to the largest row."""
    if not rows:
        return _svg(width, 20, '<text x="4" y="14" font-size="11">none</text>', label)
    widest = max(max(sum(r.parts.values()) for r in rows), 1e-9)
    height = row_h * len(rows) + 4
    body = []
    for i, row in enumerate(rows):
        top = 2 + i * row_h
        body.append(f'<text x="0" y="{top + row_h - 4}" font-size="11">{escape(row.label)}</text>')
        left = float(label_w)
        for name, amount in row.parts.items():
            w = (width - label_w - note_w - 4) * amount / widest
            if w > 0:
                body.append(
                    f'<rect class="part-{escape(name)}" x="{left:.1f}" y="{top + 2}" '
                    f'width="{w:.1f}" height="{row_h - 4}" fill="{COLOURS.get(name, "#888")}">'
                    f"<title>{escape(name)}: {amount:g}</title></rect>"
                )
            left += w
        body.append(
            f'<text x="{width - note_w}" y="{top + row_h - 4}" font-size="11">'
            f"{escape(row.note)}</text>"
        )
    return _svg(width, height, "".join(body), label)


@dataclass(frozen=True)
class Cell:
    name: str
    used: float  # 0..1 of its vCPUs booked
    status: str  # up, drained, unhealthy, unreachable


def grid(cells: Sequence[Cell], label: str, per_row: int = 40, size: int = 11) -> Markup:
    """One square per hypervisor: darker is fuller; drained grey,
    unreachable red."""
    if not cells:
        return _svg(200, 20, '<text x="4" y="14" font-size="11">no hosts</text>', label)
    rows = (len(cells) + per_row - 1) // per_row
    body = []
    for i, cell in enumerate(cells):
        col, row = i % per_row, i // per_row
        if cell.status in ("drained", "unreachable"):
            fill = COLOURS[cell.status]
        else:
            shade = int(225 - 160 * max(0.0, min(1.0, cell.used)))
            fill = f"rgb({shade - 40},{shade},{shade - 20})"
        body.append(
            f'<rect class="host-{escape(cell.status)}" x="{col * (size + 1)}" '
            f'y="{row * (size + 1)}" width="{size}" height="{size}" fill="{fill}">'
            f"<title>{escape(cell.name)}: {cell.status}, {cell.used:.0%} booked</title></rect>"
        )
    return _svg(per_row * (size + 1), rows * (size + 1), "".join(body), label)


def legend(names: Sequence[str]) -> Markup:
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{COLOURS[n]}"></span>'
        f"{escape(n)}</span>"
        for n in names
    )
    return Markup(items)
