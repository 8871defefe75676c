"""Pull the runnable examples out of docs/*.md so tests can execute them.

A fenced block that starts with ```python is an example; tests exec it (with
whatever globals the page needs, e.g. a server URL) so docs cannot rot.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks(page: str) -> list[str]:
    """Return the ```python blocks of docs/<page> in order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = _BLOCK.findall(text)
    if not blocks:
        raise AssertionError(f"docs/{page} has no ```python example")
    return blocks


def run_blocks(page: str, namespace: dict[str, object] | None = None) -> dict[str, object]:
    """Exec every python block of a page in one namespace and return it."""
    ns: dict[str, object] = {"__name__": "__docs__"} if namespace is None else namespace
    for block in python_blocks(page):
        exec(compile(block, f"docs/{page}", "exec"), ns)
    return ns
