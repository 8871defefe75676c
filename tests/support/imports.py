"""Make an installed package look missing, to test the error a user without it gets."""

from __future__ import annotations

import builtins
import importlib.util
from typing import Any

import pytest


def hide_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Any ``import package`` (or of a submodule) raises ImportError until the test ends.

    ``importlib.util.find_spec`` says it is not there either, as it does for a
    package that is not installed (``backend="auto"`` looks runtimes up that way).
    """
    real_import = builtins.__import__
    real_find_spec = importlib.util.find_spec

    def hidden(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    def guarded(name: str, *args: object, **kwargs: object) -> object:
        if hidden(name):
            raise ImportError(f"No module named {package!r}")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    def find_spec(name: str, package_name: str | None = None) -> Any:
        return None if hidden(name) else real_find_spec(name, package_name)

    monkeypatch.setattr(builtins, "__import__", guarded)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
