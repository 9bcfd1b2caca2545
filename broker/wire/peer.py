"""The client's address as every listener records it (logs, audit, login throttling)."""

from __future__ import annotations

import asyncio


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, str] | None:
    """(host, "host:port") of the transport's peer; None if it is not an IP socket."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        return str(peer[0]), f"{peer[0]}:{peer[1]}"
    return None
