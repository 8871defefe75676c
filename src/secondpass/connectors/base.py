"""The ``Connector`` protocol: the only thing the pipeline knows about search engines."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from secondpass.types import Hit, SearchRequest


@runtime_checkable
class Connector(Protocol):
    """Fetches the first-stage top-N hits for a request, in the engine's order."""

    def search(self, request: SearchRequest) -> list[Hit]:
        """Return at most ``request.size`` hits, ranks 1..n, engine order."""
        ...

    def close(self) -> None:
        """Release the HTTP connections."""
        ...


@runtime_checkable
class AsyncConnector(Protocol):
    """The asyncio variant of :class:`Connector`."""

    async def search(self, request: SearchRequest) -> list[Hit]:
        """Return at most ``request.size`` hits, ranks 1..n, engine order."""
        ...

    async def close(self) -> None:
        """Release the HTTP connections."""
        ...
