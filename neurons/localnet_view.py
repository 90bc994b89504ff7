"""What the localnet shows: the per-window table and the summary, from validator rows."""

from __future__ import annotations

import re
from collections import Counter
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
        "aggregated": list(row.get("aggregated", [])),
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


def summary(rows: Sequence[Mapping[str, Any]], faulty: Mapping[str, str] | None = None) -> str:
    """The run in a line; with `faulty` ({uid: mode} of the miners that misbehave on
    purpose) a second one says how each was treated, and how often honest ones were used."""
    if not rows:
        return "no windows completed"
    faulty = faulty or {}
    first, last = rows[0]["loss"], rows[-1]["loss"]
    change = (last - first) / first if first else 0.0
    scores = rows[-1].get("scores", {})
    ranked = ", ".join(
        f"{u}={s:+.3f}" + (f" (faulty: {faulty[u]})" if u in faulty else "")
        for u, s in sorted(scores.items(), key=lambda kv: -kv[1])
    )
    text = (
        f"{len(rows)} windows: loss {first:.4f} -> {last:.4f} ({change:+.0%}); "
        f"mean gather {sum(r['gather_s'] for r in rows) / len(rows):.2f} s; "
        f"scores {ranked or '-'}"
    )
    if not faulty:
        return text
    n = len(rows)
    parts = []
    for uid, mode in sorted(faulty.items(), key=lambda kv: int(kv[0])):
        reasons = Counter(_reason_kind(r["skipped"][uid]) for r in rows if uid in r["skipped"])
        skipped = sum(reasons.values())
        why = ", ".join(f"{reason} x{count}" for reason, count in reasons.most_common())
        parts.append(f"uid {uid} ({mode}) skipped in {skipped}/{n} windows ({why or '-'})")
    honest = sorted({u for r in rows for u in r.get("scores", {})} - set(faulty), key=int)
    used = ", ".join(
        f"{u} in {sum(int(u) in r.get('aggregated', ()) for r in rows)}/{n}" for u in honest
    )
    return f"{text}\nfaulty miners: {'; '.join(parts)}; honest miners aggregated: {used or '-'}"


def _reason_kind(reason: str) -> str:
    """A skip reason's status and slug, the uid a copy copied left out ("copy: copy_of_<uid>")."""
    return re.sub(r"copy_of_\d+", "copy_of_<uid>", short_reason(reason))
