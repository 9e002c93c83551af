"""`Shares`: how many of one resource each client holds, and all of them together."""

from __future__ import annotations

__all__ = ["Shares"]


class Shares:
    """A count of what is held, by client and in all, for limits per client and per server.

    Not locked: its owner counts under its own lock, with its own checks
    (each says which limit was hit in its own words).
    """

    def __init__(self) -> None:
        self._by_client: dict[str, int] = {}
        #: Held by all clients together.
        self.total = 0

    def held_by(self, client: str) -> int:
        return self._by_client.get(client, 0)

    def take(self, client: str) -> None:
        """One more for ``client``."""
        self._by_client[client] = self._by_client.get(client, 0) + 1
        self.total += 1

    def give_back(self, client: str) -> None:
        """One less for ``client`` (which holds one)."""
        left = self._by_client[client] - 1
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]
        self.total -= 1
