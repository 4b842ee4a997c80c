"""MkDocs hook: fill each page's generated parts (docs/render.py) before it is converted to HTML."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import render  # noqa: E402


def on_page_markdown(markdown: str, **_: object) -> str:
    return render.fill(markdown)
