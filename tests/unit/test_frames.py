"""parse(): typed frames from decoded arrays, and the error code table.

Every frame type goes encode -> FrameDecoder.feed -> parse and must come back equal.
parse() must turn every bad array into ProtocolSyntaxError / NotImplementedByBroker that
carries the request id, so the broker can answer the right request.
"""

from __future__ import annotations

from typing import Any

import pytest

from wharf.protocol import errors
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode, encode_array
from wharf.protocol.errors import (
    NotImplementedByBroker,
    ProtocolSyntaxError,
    WharfError,
    error_from_code,
    is_fatal,
)

DELIVERY_1 = (1, False, 1, "orders", "eu.new", {"content_type": "text/plain"}, b"one")
DELIVERY_2 = (2, True, 3, "", "orders", None, b"\x00\xff")

# One fully populated frame of every type (no field left at its default where avoidable).
SAMPLES: list[F.Frame] = [
    F.Error(5, 404, "no queue 'x'", False, {"queue": "x"}),
    F.Hello(0, 1, "wharf", 32 * 1024 * 1024, 16 * 1024 * 1024, 60, ["PLAIN", "FUTURE"]),
    F.Auth(1, "PLAIN", "guest", "guest", 30, {"product": "wharf-python", "version": "0.1"}),
    F.AuthOk(1, "conn-1", 30, {"product": "wharf"}, "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
    F.AuthChallenge(1, "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"),
    F.AuthResponse(1, "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQ="),
    F.Heartbeat(0),
    F.Close(9, 320, "operator closed the connection"),
    F.CloseOk(9),
    F.Ok(3, {"queue": "orders", "messages": 12, "consumers": 1}),
    F.ExchangeDeclare(2, "events", "topic", True, True, True, True, {"alternate-exchange": "ae"}),
    F.ExchangeDelete(2, "events", True),
    F.ExchangeBind(2, "dst", "src", "a.*", {"x-match": "any"}),
    F.ExchangeUnbind(2, "dst", "src", "a.#", None),
    F.QueueDeclare(3, "orders", True, True, True, True, {"x-max-length": 10}),
    F.QueueBind(4, "orders", "events", "orders.#", {"k": [1, 2]}),
    F.QueueUnbind(4, "orders", "events", "orders.#", None),
    F.QueuePurge(5, "orders"),
    F.QueueDelete(6, "orders", True, True),
    F.Publish(7, "events", "orders.eu", {"persistent": True, "headers": {"a": 1}}, b"hi", 1),
    F.PublishMany(8, "events", "orders.us", None, [b"a", b"", b"c" * 300], F.FLAG_MANDATORY),
    F.Confirm(0, 10),
    F.PublishNack(0, 11, 311, "too large"),
    F.Return(0, 12, 312, "NO_ROUTE", "events", "nowhere", {"type": "t"}, b"lost"),
    F.Consume(13, "orders", "my-tag", 100, True, True, {"x-priority": 5}),
    F.Cancel(14, "my-tag"),
    F.Cancelled(0, "my-tag", 404, "queue 'orders' was deleted"),
    F.Deliver(0, "my-tag", [DELIVERY_1, DELIVERY_2]),
    F.Get(15, "orders", True),
    F.GetOk(15, DELIVERY_1, 41),
    F.Ack(13, 2**64 - 1, True),
    F.Nack(13, 3, True, False),
    F.Reject(0, 4, False),
    F.AckMany(13, [5, 6, 9]),
    F.Blocked(0, "memory"),
    F.QueueReplay(14, "dlq", None, "rejected", 10, 3),
    F.PolicySet(15, "ttl", "^orders\\.", {"message-ttl": 1000}, 5, "queues"),
    F.PolicyDelete(16, "ttl"),
    F.PolicyList(17),
    F.Unblocked(0),
    F.Throttled(0, "consume", 1250),
    F.TopicCreate(18, "events", 6, {"future": 1}),
    F.TopicDelete(19, "events"),
    F.TopicDescribe(20, "events"),
    F.TopicAlter(21, "events", 8, {"retention_ms": 86_400_000}),
    F.Produce(22, "events", -1, b"\x91\x95\x00\x01\xc0\xc4\x01v\xc0", 1, "fsynced", 7, 0, 42),
    F.Fetch(23, "events", 2, 41, 65536, 500),
    F.ListOffsets(24, "events", 2, 1_700_000_000_000),
    F.FetchMany(27, [["events", 0, 41, 65536], ["orders", 3, 0, 1024]], 500, 1_048_576),
    F.TopicList(28),
    F.InitProducer(29),
    F.TopicBind(25, "audit", "orders", "eu.#", {"x-match": "any"}),
    F.TopicUnbind(26, "audit", "orders", "eu.#", None),
    F.InitTransactions(40, "payments-enricher", 60_000),
    F.TxnSendOffsets(41, "payments-enricher", 7, 1, "g", [["in", 0, 12, None]], "m-1", 3),
    F.TxnAck(44, "payments-enricher", 7, 1, [3, 4, 9]),
    F.EndTxn(42, "payments-enricher", 7, 1, True),
    F.GroupJoin(
        30, "billing", ["events", "orders"], "", "w-1", "sticky", 10_000, 30_000, [["events", [0]]]
    ),
    F.GroupHeartbeat(31, "billing", "app-7f3e", 3),
    F.GroupLeave(32, "billing", "app-7f3e"),
    F.OffsetCommit(33, "billing", "app-7f3e", 3, [["events", 0, 42, "host-a"]]),
    F.OffsetFetch(34, "billing", ["events"]),
    F.GroupList(35),
    F.GroupDescribe(36, "billing"),
    F.GroupDelete(37, "billing"),
    F.GroupResetOffsets(38, "billing", "events", "timestamp", 1_700_000_000_000, [0, 1]),
]

SAMPLE_IDS = [type(f).__name__ for f in SAMPLES]
# A value of a msgpack type that no frame field accepts.
NEVER_VALID = 1.5


def norm(value: Any) -> Any:
    """Tuples and lists compare equal after this (use_list=False decodes arrays as tuples)."""
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    return value


def decode_one(data: bytes, *, use_list: bool = True) -> Any:
    raws = FrameDecoder(use_list=use_list).feed(data)
    assert len(raws) == 1
    return raws[0]


def raw_of(frame: F.Frame) -> list[Any]:
    return list(F.as_array(frame))


# -- coverage of the frame table -------------------------------------------------------


def test_samples_cover_every_frame_type() -> None:
    assert sorted(F.TYPE_OF[type(f)] for f in SAMPLES) == sorted(F.SPECS)


def test_type_numbers_are_unique_and_named() -> None:
    assert len(set(F.TYPE_OF.values())) == len(F.TYPE_OF)
    assert F.FRAME_NAMES[F.PUBLISH] == "Publish"
    assert F.FRAME_NAMES[F.ACK_MANY] == "AckMany"


def test_handshake_constant() -> None:
    assert F.HANDSHAKE == b"WHARF\x00\x01\x00"
    assert F.HANDSHAKE_BYTES == 8
    assert F.PROTOCOL_VERSION == 1


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("use_list", [True, False], ids=["lists", "tuples"])
@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_round_trip_every_frame_type(frame: F.Frame, use_list: bool) -> None:
    raw = decode_one(encode(frame), use_list=use_list)
    assert isinstance(raw, list if use_list else tuple)
    parsed = F.parse(raw)
    assert type(parsed) is type(frame)
    assert norm(tuple(parsed)) == norm(tuple(frame))


@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_as_array_encodes_like_the_frame(frame: F.Frame) -> None:
    array = F.as_array(frame)
    assert array[0] == F.TYPE_OF[type(frame)]
    assert array[1] == frame[0]
    assert encode_array(array) == encode(frame)
    assert encode_array(list(array)) == encode(frame)


def test_bodies_stay_bytes_and_names_stay_str() -> None:
    frame = F.parse(decode_one(encode(F.Publish(1, "ex", "rk", None, b"body"))))
    assert isinstance(frame, F.Publish)
    assert type(frame.body) is bytes
    assert type(frame.exchange) is str


# -- missing and mistyped fields ---------------------------------------------------------


@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_missing_required_fields(frame: F.Frame) -> None:
    spec = F.SPECS[F.TYPE_OF[type(frame)]]
    raw = raw_of(frame)
    # raw = [type, request_id, ...]; the codec guarantees those two, so only fields after
    # the request id can be missing.
    for keep in range(2, spec.required + 1):
        with pytest.raises(ProtocolSyntaxError) as info:
            F.parse(raw[:keep])
        assert info.value.details["request_id"] == raw[1]
        assert info.value.details["frame_type"] == raw[0]
        assert info.value.code == 502
        assert not info.value.fatal


@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_wrong_type_in_any_field(frame: F.Frame) -> None:
    raw = raw_of(frame)
    for index in range(1, len(raw)):
        bad = list(raw)
        bad[index] = NEVER_VALID
        with pytest.raises(ProtocolSyntaxError) as info:
            F.parse(bad)
        field = type(frame)._fields[index - 1]
        assert field in info.value.message
        assert info.value.details["request_id"] == bad[1]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([F.ACK, 1, True, False], "delivery_tag"),  # bool is not an int
        ([F.ACK, 1, 5, 1], "multiple"),  # int is not a bool
        ([F.PUBLISH, 1, "ex", "rk", None, "text body"], "body"),  # str is not bin
        ([F.PUBLISH, 1, b"ex", "rk", None, b"b"], "exchange"),  # bin is not str
        ([F.PUBLISH, 1, "ex", "rk", [], b"b"], "properties"),  # array is not a map
        ([F.PUBLISH, 1, "ex", "rk", None, None], "body"),  # required, not nullable
        ([F.QUEUE_DECLARE, 1, None], "name"),
        ([F.CONSUME, 1, "q", "tag", -0.0], "prefetch"),
        ([F.ACK_MANY, 1, {"a": 1}], "delivery_tags"),
        ([F.PUBLISH_MANY, 1, "ex", "rk", None, b"not a list"], "bodies"),
        ([F.GET_OK, 1, "entry", 0], "delivery"),
    ],
)
def test_specific_type_mismatches(raw: list[Any], field: str) -> None:
    with pytest.raises(ProtocolSyntaxError, match=field) as info:
        F.parse(raw)
    assert info.value.details == {"request_id": raw[1], "frame_type": raw[0]}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([F.HELLO, 0, 1, "wharf", 10, 10, 0, ["PLAIN", 7]], "mechanisms"),
        ([F.DELIVER, 0, "t", [list(DELIVERY_1)[:6]]], "deliveries"),  # entry too short
        ([F.DELIVER, 0, "t", [[1, 0, 1, "", "q", None, b""]]], "deliveries"),  # int as bool
        ([F.DELIVER, 0, "t", [[1, False, 1, "", "q", None, "str body"]]], "deliveries"),
        ([F.DELIVER, 0, "t", [list(DELIVERY_1), "not an entry"]], "deliveries"),
        ([F.DELIVER, 0, "t", [[1, False, 1, "", "q", [], b""]]], "deliveries"),
        ([F.GET_OK, 1, [True, False, 1, "", "q", None, b""], 0], "delivery"),
    ],
)
def test_array_elements_are_checked(raw: list[Any], field: str) -> None:
    with pytest.raises(ProtocolSyntaxError, match=field):
        F.parse(raw)


def test_delivery_entries_may_carry_extra_trailing_elements() -> None:
    entry = [*DELIVERY_1, "a future field"]
    frame = F.parse([F.DELIVER, 0, "t", [entry]])
    assert isinstance(frame, F.Deliver)
    assert frame.deliveries[0][:7] == list(DELIVERY_1)


def test_broker_checks_publish_many_bodies_and_ack_many_tags_itself() -> None:
    # parse() leaves these element checks to the broker so that it can answer with
    # PUBLISH_NACK per sequence number / an ERROR echoing the ack id (SPEC section 7).
    assert isinstance(F.parse([F.PUBLISH_MANY, 1, "ex", "rk", None, [1, "x"]]), F.PublishMany)
    assert isinstance(F.parse([F.ACK_MANY, 1, ["x", True]]), F.AckMany)


def test_parse_accepts_an_empty_deliver_list_and_empty_bodies() -> None:
    assert F.parse([F.DELIVER, 0, "t", []]) == F.Deliver(0, "t", [])
    assert F.parse([F.PUBLISH_MANY, 1, "ex", "rk", None, []]) == F.PublishMany(
        1, "ex", "rk", None, []
    )


# -- forward compatibility ---------------------------------------------------------------


@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_extra_trailing_fields_are_ignored(frame: F.Frame) -> None:
    raw = [*raw_of(frame), "future", 42, None, {"x": b"y"}]
    assert norm(tuple(F.parse(raw))) == norm(tuple(frame))
    # ... also after a full trip over the codec.
    assert norm(tuple(F.parse(decode_one(encode_array(raw))))) == norm(tuple(frame))


@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_omitted_optional_fields_get_defaults(frame: F.Frame) -> None:
    cls = type(frame)
    spec = F.SPECS[F.TYPE_OF[cls]]
    raw = raw_of(frame)
    keep = max(spec.required + 1, 2)  # the type and the request id are always present
    parsed = F.parse(raw[:keep])
    for i, name in enumerate(cls._fields):
        if i + 1 < keep:
            assert norm(parsed[i]) == norm(frame[i]), name
        else:
            assert parsed[i] == cls._field_defaults[name], name


@pytest.mark.parametrize("frame", SAMPLES, ids=SAMPLE_IDS)
def test_nil_optional_fields_get_defaults(frame: F.Frame) -> None:
    cls = type(frame)
    spec = F.SPECS[F.TYPE_OF[cls]]
    raw = raw_of(frame)
    for i in range(max(spec.required, 1), len(cls._fields)):
        raw[i + 1] = None
    parsed = F.parse(raw)
    for i, name in enumerate(cls._fields):
        if i >= max(spec.required, 1):
            assert parsed[i] == cls._field_defaults[name], name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([F.PUBLISH, 0, "", "q", None, b"hi"], F.Publish(0, "", "q", None, b"hi", 0)),
        ([F.ACK, 7, 3], F.Ack(7, 3, False)),
        ([F.NACK, 7, 3], F.Nack(7, 3, False, True)),
        ([F.NACK, 7, 3, None, None], F.Nack(7, 3, False, True)),
        ([F.REJECT, 7, 3], F.Reject(7, 3, True)),
        ([F.CONSUME, 2, "q"], F.Consume(2, "q", "", 0, False, False, None)),
        ([F.QUEUE_DECLARE, 2, ""], F.QueueDeclare(2, "", False, False, False, False, None)),
        ([F.EXCHANGE_DECLARE, 2, "x", None], F.ExchangeDeclare(2, "x", "direct")),
        ([F.AUTH, 1, "PLAIN", "u", "p"], F.Auth(1, "PLAIN", "u", "p", 0, None)),
        ([F.CLOSE, 1], F.Close(1, 0, "")),
        ([F.ERROR, 1, 404, "gone"], F.Error(1, 404, "gone", False, None)),
        ([F.GET_OK, 1, None], F.GetOk(1, None, 0)),
        ([F.OK, 1], F.Ok(1, None)),
        ([F.HEARTBEAT, 0], F.Heartbeat(0)),
    ],
)
def test_documented_defaults(raw: list[Any], expected: F.Frame) -> None:
    assert F.parse(raw) == expected


@pytest.mark.parametrize("ftype", [14, 29, 35, 46, 54, 96, 99, 255, 70000, -1, 2**64 - 1])
def test_unknown_frame_type(ftype: int) -> None:
    with pytest.raises(NotImplementedByBroker) as info:
        F.parse([ftype, 77, "whatever", {"a": 1}])
    err = info.value
    assert err.code == 540
    assert not err.fatal
    assert err.details == {"request_id": 77, "frame_type": ftype}


# -- the error table ------------------------------------------------------------------


def test_error_table_codes_are_unique_and_classes_match() -> None:
    codes = [spec.code for spec in errors.ERROR_TABLE]
    assert len(codes) == len(set(codes))
    for spec in errors.ERROR_TABLE:
        cls = errors.ERRORS_BY_CODE[spec.code]
        assert cls.__name__ == spec.name
        assert issubclass(cls, WharfError)
        assert (cls.code, cls.fatal, cls.retriable) == (spec.code, spec.fatal, spec.retriable)
        assert cls.__module__ == "wharf.protocol.errors"
        assert getattr(errors, spec.name) is cls
        assert is_fatal(spec.code) is spec.fatal


def test_connection_fatal_codes() -> None:
    fatal = {spec.code for spec in errors.ERROR_TABLE if spec.fatal}
    assert fatal == {320, 501, 505, 507, 508, 599}


def test_error_from_code() -> None:
    err = error_from_code(404, "no queue 'q'", {"queue": "q"})
    assert isinstance(err, errors.NotFound)
    assert err.details == {"queue": "q"}
    assert str(err) == "[404] no queue 'q'"
    unknown = error_from_code(777, "from the future")
    assert type(unknown) is WharfError
    assert unknown.code == 777
    assert WharfError.code == 0  # setting it on one instance leaves the class alone
    assert not is_fatal(777)


def test_errors_default_to_empty_details() -> None:
    err = ProtocolSyntaxError("bad")
    assert err.details == {}
    assert err.message == "bad"


# -- nesting depth of map fields (the broker's parse: max_depth) ---------------------------


def _nested(levels: int, leaf: Any = None) -> Any:
    """``levels`` levels of maps and arrays, alternating, around ``leaf``."""
    value = leaf
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


def _nested_tuple(levels: int) -> Any:
    """An array key (msgpack decodes it as a tuple) nested ``levels`` deep."""
    value: Any = 1
    for _ in range(levels):
        value = (value,)
    return value


def test_map_fields_nest_at_most_max_depth_levels() -> None:
    depth = F.MAX_NESTING_DEPTH
    ok = [F.QUEUE_DECLARE, 3, "q", False, False, False, False, {"x": _nested(depth - 1)}]
    assert F.parse(ok, depth).arguments == ok[-1]
    deep = [F.QUEUE_DECLARE, 3, "q", False, False, False, False, {"x": _nested(depth)}]
    with pytest.raises(ProtocolSyntaxError, match=f"arguments nests .* deeper than {depth}") as e:
        F.parse(deep, depth)
    assert e.value.details == {"request_id": 3, "frame_type": F.QUEUE_DECLARE, "max_depth": depth}
    assert F.parse(deep).arguments == deep[-1]  # unchecked without max_depth (the SDK)


@pytest.mark.parametrize(
    "raw",
    [
        [F.PUBLISH, 1, "", "q", {"headers": {"h": _nested(40)}}, b"b", 0],
        [F.AUTH, 1, "PLAIN", "u", "p", 0, {"client": _nested(40)}],
        [F.POLICY_SET, 1, "p", ".*", {"d": _nested(40)}, 0, "queues"],
        [F.TOPIC_CREATE, 1, "t", 1, {"c": _nested(40)}],
        [F.TOPIC_CREATE, 1, "t", 1, {_nested_tuple(40): 1}],
    ],
    ids=["publish-headers", "client-properties", "policy", "topic-config", "array-key"],
)
def test_every_map_field_is_depth_checked(raw: list[Any]) -> None:
    with pytest.raises(ProtocolSyntaxError, match="deeper than"):
        F.parse(raw, F.MAX_NESTING_DEPTH)
