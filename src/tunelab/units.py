"""Sizes and counts as people read them; no heavy imports, so `tunelab recommend` can use them."""

from __future__ import annotations


def human_bytes(count: float | None) -> str:
    """Decimal units, as everywhere in tunelab (`--memory 8GB` is 8e9 bytes): 1 KB = 1,000 bytes."""
    if count is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def human_count(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.1f}K" if count >= 1e3 else str(count)
