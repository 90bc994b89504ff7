"""What the localnet shows: the per-window table and the summary, from validator rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

COLUMNS = ("window", "loss", "gather_s", "bytes", "success_rate", "skipped")


def short_reason(reason: str) -> str:
    """The status and slug of a skip reason ("invalid: header_too_large"), without details."""
    parts: list[str] = []
    for token in reason.split(": "):
        if " " in token or len(parts) == 2:
            break
        if not parts or parts[-1] != token:
            parts.append(token)
    return ": ".join(parts) or reason[:40]


def table_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One validator window as the table's columns (also what --json writes)."""
    return {
        "window": row["window"],
        "loss": row["loss"],
        "gather_s": row["gather_seconds"],
        "bytes": row["bytes"],
        "success_rate": row["success_rate"],
        "skipped": dict(row["skipped"]),
        "scores": dict(row.get("scores", {})),
    }


def render(rows: Sequence[Mapping[str, Any]], title: str = "localnet") -> Table:
    table = Table(title=title, expand=False)
    table.add_column("window", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("gather s", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("success", justify="right")
    table.add_column("skipped (uid: reason)")
    for r in rows:
        skipped = "; ".join(f"{u}: {short_reason(why)}" for u, why in r["skipped"].items())
        table.add_row(
            str(r["window"]),
            f"{r['loss']:.4f}",
            f"{r['gather_s']:.2f}",
            f"{r['bytes']:,}",
            f"{r['success_rate']:.0%}",
            skipped or "-",
        )
    return table


def line(r: Mapping[str, Any]) -> str:
    """One window as a plain line, for logs and terminals without live display."""
    skipped = ", ".join(f"{u} {short_reason(why)}" for u, why in r["skipped"].items()) or "-"
    return (
        f"window {r['window']:>5}  loss {r['loss']:.4f}  gather {r['gather_s']:.2f} s  "
        f"{r['bytes']:>8,} B  success {r['success_rate']:.0%}  skipped: {skipped}"
    )


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "no windows completed"
    first, last = rows[0]["loss"], rows[-1]["loss"]
    change = (last - first) / first if first else 0.0
    scores = rows[-1].get("scores", {})
    ranked = ", ".join(f"{u}={s:+.3f}" for u, s in sorted(scores.items(), key=lambda kv: -kv[1]))
    return (
        f"{len(rows)} windows: loss {first:.4f} -> {last:.4f} ({change:+.0%}); "
        f"mean gather {sum(r['gather_s'] for r in rows) / len(rows):.2f} s; "
        f"scores {ranked or '-'}"
    )
