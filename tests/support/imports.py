"""Make an installed package look missing, to test the error a user without it gets."""

from __future__ import annotations

import builtins

import pytest


def hide_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Any ``import package`` (or of a submodule) raises ImportError until the test ends."""
    real_import = builtins.__import__

    def guarded(name: str, *args: object, **kwargs: object) -> object:
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named {package!r}")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", guarded)
