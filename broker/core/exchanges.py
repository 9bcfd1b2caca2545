"""Exchange types and their routing.

An exchange maps (routing key, headers) to a list of *destinations*: queues, other
exchanges (exchange-to-exchange bindings) or log topics (``TopicTarget``).  Following
bindings to further exchanges, applying alternate exchanges and de-duplicating queues
is the topology's job (``Topology.route``); an exchange only answers "which of my
bindings match".

Routing results of direct and topic exchanges are cached per routing key; any change
to an exchange's bindings clears its cache.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from wharf.protocol.errors import InvalidArgument

EXCHANGE_TYPES: Final = ("direct", "fanout", "topic", "headers")
# Routing keys remembered per topic/headers-free exchange before the cache is reset.
ROUTE_CACHE_ENTRIES: Final = 4096


class Destination(Protocol):
    name: str


class Binding:
    """One binding from an exchange to a destination."""

    __slots__ = ("source", "destination", "routing_key", "arguments", "_key")

    def __init__(
        self,
        source: Exchange,
        destination: Any,
        routing_key: str,
        arguments: dict[str, Any] | None,
    ) -> None:
        self.source = source
        self.destination = destination
        self.routing_key = routing_key
        self.arguments: dict[str, Any] = dict(arguments or {})
        self._key = binding_key(destination, routing_key, self.arguments)

    @property
    def key(self) -> tuple[Any, ...]:
        return self._key

    def describe(self) -> dict[str, Any]:
        dest = self.destination
        kind = (
            "exchange"
            if isinstance(dest, Exchange)
            else "topic"
            if isinstance(dest, TopicTarget)
            else "queue"
        )
        return {
            "source": self.source.name,
            "destination": dest.name,
            "destination_type": kind,
            "routing_key": self.routing_key,
            "arguments": self.arguments,
        }


class TopicTarget:
    """A log topic as a binding destination: messages routed to it are appended to the
    topic (broker/logs/routed.py).  One per bound topic, kept by the topology."""

    __slots__ = ("name", "bindings")

    def __init__(self, name: str) -> None:
        self.name = name
        self.bindings: list[Binding] = []


def binding_key(
    destination: Any, routing_key: str, arguments: dict[str, Any] | None
) -> tuple[Any, ...]:
    args = tuple(sorted((str(k), repr(v)) for k, v in (arguments or {}).items()))
    return (id(destination), routing_key, args)


def topic_words(key: str) -> list[str]:
    """Words of a topic key.  As in RabbitMQ, "" has no words; "a..b" has an empty one."""
    return key.split(".") if key else []


class _TopicNode:
    __slots__ = ("children", "star", "hash", "bindings")

    def __init__(self) -> None:
        self.children: dict[str, _TopicNode] = {}
        self.star: _TopicNode | None = None
        self.hash: _TopicNode | None = None
        self.bindings: list[Binding] = []


class _TopicTrie:
    """Trie over dot-separated words; ``*`` matches one word, ``#`` zero or more.

    Empty words are kept: ``"a..b"`` has three words ``a``, ``""``, ``b``; the key ``""``
    has none (so ``*`` does not match it, ``#`` does), as in RabbitMQ.
    """

    __slots__ = ("root",)

    def __init__(self) -> None:
        self.root = _TopicNode()

    def add(self, binding: Binding) -> None:
        node = self.root
        for word in topic_words(binding.routing_key):
            if word == "*":
                if node.star is None:
                    node.star = _TopicNode()
                node = node.star
            elif word == "#":
                if node.hash is None:
                    node.hash = _TopicNode()
                node = node.hash
            else:
                nxt = node.children.get(word)
                if nxt is None:
                    nxt = node.children[word] = _TopicNode()
                node = nxt
        node.bindings.append(binding)

    def remove(self, binding: Binding) -> None:
        path: list[tuple[_TopicNode, str]] = []
        node: _TopicNode | None = self.root
        for word in topic_words(binding.routing_key):
            assert node is not None
            path.append((node, word))
            if word == "*":
                node = node.star
            elif word == "#":
                node = node.hash
            else:
                node = node.children.get(word)
            if node is None:
                return
        assert node is not None
        node.bindings = [b for b in node.bindings if b is not binding]
        # Prune empty branches so the trie does not grow with churn.
        for parent, word in reversed(path):
            child = (
                parent.star
                if word == "*"
                else parent.hash
                if word == "#"
                else parent.children.get(word)
            )
            if child is None or child.bindings or child.children or child.star or child.hash:
                break
            if word == "*":
                parent.star = None
            elif word == "#":
                parent.hash = None
            else:
                del parent.children[word]

    def match(self, routing_key: str) -> list[Binding]:
        words = topic_words(routing_key)
        out: list[Binding] = []
        seen: set[int] = set()
        self._match(self.root, words, 0, out, seen)
        return out

    def _match(
        self, node: _TopicNode, words: list[str], i: int, out: list[Binding], seen: set[int]
    ) -> None:
        if node.hash is not None:
            # '#' consumes zero or more words.
            for j in range(i, len(words) + 1):
                self._match(node.hash, words, j, out, seen)
        if i == len(words):
            for b in node.bindings:
                if id(b) not in seen:
                    seen.add(id(b))
                    out.append(b)
            return
        child = node.children.get(words[i])
        if child is not None:
            self._match(child, words, i + 1, out, seen)
        if node.star is not None:
            self._match(node.star, words, i + 1, out, seen)


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Reference matcher (used by tests and the headers-free slow path)."""
    pw = topic_words(pattern)
    kw = topic_words(routing_key)

    def rec(i: int, j: int) -> bool:
        if i == len(pw):
            return j == len(kw)
        if pw[i] == "#":
            return any(rec(i + 1, k) for k in range(j, len(kw) + 1))
        if j == len(kw):
            return False
        return (pw[i] == "*" or pw[i] == kw[j]) and rec(i + 1, j + 1)

    return rec(0, 0)


_XMATCH_MODES: Final = ("all", "any", "all-with-x", "any-with-x")


def headers_match(binding_args: dict[str, Any], headers: dict[str, Any] | None) -> bool:
    """RabbitMQ's headers-exchange rule.

    ``x-match`` is all (default), any, all-with-x or any-with-x.  Binding arguments
    whose key starts with ``x-`` take part only in the *-with-x modes.  A binding
    argument whose value is nil matches on the presence of the header alone.
    """
    mode = binding_args.get("x-match", "all")
    with_x = mode.endswith("-with-x")
    want_all = mode.startswith("all")
    hdrs = headers or {}
    matched_any = False
    for key, value in binding_args.items():
        if key == "x-match" or (not with_x and isinstance(key, str) and key.startswith("x-")):
            continue
        ok = key in hdrs and (value is None or _same_value(hdrs[key], value))
        if want_all and not ok:
            return False
        if ok:
            matched_any = True
            if not want_all:
                return True
    return want_all or matched_any


def _same_value(a: Any, b: Any) -> bool:
    # msgpack decodes 1 and True differently; treat them as different like AMQP types.
    return type(a) is type(b) and bool(a == b)


def validate_headers_binding(arguments: dict[str, Any] | None) -> None:
    mode = (arguments or {}).get("x-match", "all")
    if mode not in _XMATCH_MODES:
        raise InvalidArgument(
            f"x-match must be one of {', '.join(_XMATCH_MODES)}, got {mode!r}",
            details={"argument": "x-match"},
        )


class Exchange:
    """A named router.  Owns its outgoing bindings."""

    __slots__ = (
        "name",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "arguments",
        "alternate",
        "bindings",
        "_by_key",
        "_direct",
        "_trie",
        "_cache",
        "_fanout",
        "incoming",
    )

    def __init__(
        self,
        name: str,
        type_: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        if type_ not in EXCHANGE_TYPES:
            raise InvalidArgument(
                f"exchange type must be one of {', '.join(EXCHANGE_TYPES)}, got {type_!r}",
                details={"argument": "type"},
            )
        self.name = name
        self.type = type_
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments: dict[str, Any] = dict(arguments or {})
        alt = self.arguments.get("alternate-exchange")
        if alt is not None and not isinstance(alt, str):
            raise InvalidArgument(
                "alternate-exchange must be a string", details={"argument": "alternate-exchange"}
            )
        self.alternate: str | None = alt
        self.bindings: list[Binding] = []
        self._by_key: dict[tuple[Any, ...], Binding] = {}
        self._direct: dict[str, list[Any]] = {}
        self._trie = _TopicTrie() if type_ == "topic" else None
        self._cache: dict[str, list[Any]] = {}
        self._fanout: list[Any] = []
        # Bindings in which this exchange is the destination (exchange-to-exchange).
        self.incoming: list[Binding] = []

    def find_binding(
        self, destination: Any, routing_key: str, arguments: dict[str, Any] | None
    ) -> Binding | None:
        return self._by_key.get(binding_key(destination, routing_key, arguments))

    def add_binding(self, binding: Binding) -> bool:
        """Add a binding; False if an identical one exists (bind is idempotent)."""
        if binding.key in self._by_key:
            return False
        if self.type == "headers":
            validate_headers_binding(binding.arguments)
        self._by_key[binding.key] = binding
        self.bindings.append(binding)
        self._cache.clear()
        dest = binding.destination
        if self.type == "direct":
            dests = self._direct.setdefault(binding.routing_key, [])
            if dest not in dests:
                dests.append(dest)
        elif self.type == "fanout":
            if dest not in self._fanout:
                self._fanout.append(dest)
        elif self._trie is not None:
            self._trie.add(binding)
        return True

    def remove_binding(self, binding: Binding) -> None:
        if self._by_key.pop(binding.key, None) is None:
            return
        self.bindings.remove(binding)
        self._cache.clear()
        dest = binding.destination
        # The destination stays routed if another binding still leads to it.
        if self.type == "direct":
            still = any(
                b.destination is dest and b.routing_key == binding.routing_key
                for b in self.bindings
            )
            dests = self._direct.get(binding.routing_key)
            if dests is not None and not still:
                dests.remove(dest)
                if not dests:
                    del self._direct[binding.routing_key]
        elif self.type == "fanout":
            if not any(b.destination is dest for b in self.bindings):
                self._fanout.remove(dest)
        elif self._trie is not None:
            self._trie.remove(binding)

    def match(self, routing_key: str, headers: dict[str, Any] | None) -> list[Any]:
        """Destinations whose bindings match; each destination at most once."""
        kind = self.type
        if kind == "direct":
            return self._direct.get(routing_key, _EMPTY)
        if kind == "fanout":
            return self._fanout
        if kind == "topic":
            cached = self._cache.get(routing_key)
            if cached is not None:
                return cached
            assert self._trie is not None
            dests: list[Any] = []
            for b in self._trie.match(routing_key):
                if b.destination not in dests:
                    dests.append(b.destination)
            if len(self._cache) >= ROUTE_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[routing_key] = dests
            return dests
        out: list[Any] = []
        for b in self.bindings:
            if b.destination not in out and headers_match(b.arguments, headers):
                out.append(b.destination)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "durable": self.durable,
            "auto_delete": self.auto_delete,
            "internal": self.internal,
            "arguments": self.arguments,
        }


_EMPTY: Final[list[Any]] = []
