"""Pre-flight check of the listening ports, before the broker touches its data directory.

``wharf serve`` on a busy port used to lock the data directory, create its sub-directories
and run recovery, and only then fail on the first busy port it tried; a second busy port
showed up on the next attempt.  :func:`busy_ports` tries every port first and names all the
ones that cannot be bound, so one message says what to change.

The check binds a throw-away socket the way asyncio's ``create_server`` does (every address
the host resolves to, ``SO_REUSEADDR``, IPv6 sockets v6-only) and closes it at once.  It is
a check, not a reservation: a program that takes the port in between still makes the real
listen fail, with the ordinary error.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BusyPort:
    role: str  # "native protocol", "HTTP", "AMQP", ...
    host: str
    port: int
    reason: str  # the OS error, e.g. "Address already in use"

    def describe(self) -> str:
        return f"{self.role} port {self.port} on {self.host}: {self.reason}"


def _bind_error(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or None if every address binds."""
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except OSError as exc:
        return f"cannot resolve host: {exc}"
    for family, kind, proto, _name, address in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # an address family this system lacks; asyncio skips it too
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc.strerror or str(exc)
    return None


def busy_ports(listeners: list[tuple[str, str, int]]) -> list[BusyPort]:
    """The listeners ``(role, host, port)`` that cannot be bound now; port 0 always can."""
    busy: list[BusyPort] = []
    for role, host, port in listeners:
        if port == 0:
            continue
        reason = _bind_error(host, port)
        if reason is not None:
            busy.append(BusyPort(role, host, port, reason))
    return busy


def busy_ports_message(busy: list[BusyPort]) -> str:
    """One line naming every busy port, e.g. for the log before ``wharf serve`` exits."""
    return (
        "cannot listen: "
        + "; ".join(b.describe() for b in busy)
        + " (stop what uses them, or choose others: --port/--http-port/--amqp-port/"
        "--amqps-port, WHARF_PORT/WHARF_HTTP_PORT/WHARF_AMQP_PORT/WHARF_AMQPS_PORT; an AMQP "
        "port of 0 turns that listener off)"
    )
