"""Direct reply-to (RabbitMQ's ``amq.rabbitmq.reply-to``): RPC replies without a queue.

A client consumes from the pseudo-queue ``amq.rabbitmq.reply-to`` with no-ack; its
channel gets a name ``amq.rabbitmq.reply-to.<token>``.  A publish on that channel with
``reply_to = amq.rabbitmq.reply-to`` carries the name instead, and a publish to the
default exchange with the name as routing key is delivered straight to that channel's
reply consumer: no queue, no store, no acknowledgement.  A reply whose channel is gone
is dropped (returned with 312 NO_ROUTE when mandatory).

The names are per broker process and a reply reaches a channel of the same vhost only.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .channel import Channel

REPLY_TO_QUEUE: Final = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX: Final = REPLY_TO_QUEUE + "."
# 18 random bytes: 24 URL-safe characters, not guessable by another client.
TOKEN_BYTES: Final = 18


class ReplyRegistry:
    """The channels with a reply consumer, by their reply name."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def __len__(self) -> int:
        return len(self._channels)

    def register(self, channel: Channel) -> str:
        """A new reply name for ``channel``."""
        while True:
            name = REPLY_TO_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
            if name not in self._channels:
                self._channels[name] = channel
                return name

    def unregister(self, name: str) -> None:
        self._channels.pop(name, None)

    def get(self, name: str, vhost: str) -> Channel | None:
        """The channel ``name`` reaches from ``vhost``, or None."""
        channel = self._channels.get(name)
        if channel is None or channel.closing or channel.conn.vhost != vhost:
            return None
        return channel
