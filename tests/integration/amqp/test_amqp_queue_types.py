"""x-queue-type over AMQP: quorum queues with RabbitMQ 3.10's rules and texts, stream
refused; checked with pika against Wharf (the expected texts were taken from RabbitMQ 3.10).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

import wharf
from wharf.broker.server import Broker

from ...conftest import make_settings
from ..test_api import api
from .raw_amqp import free_port

INACTIVITY_S = 5.0
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


def _refused(params: pika.ConnectionParameters, **declare: Any) -> tuple[int, str]:
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare(**declare)
        return info.value.reply_code, info.value.reply_text


async def test_quorum_declaration_rules_use_rabbitmq_texts(
    amqp_params: pika.ConnectionParameters,
) -> None:
    def scenario() -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            (
                {"queue": "q1", "durable": False, "arguments": QUORUM},
                "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q1' in vhost '/'",
            ),
            (
                {"queue": "q2", "durable": True, "exclusive": True, "arguments": QUORUM},
                "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 'q2' "
                "in vhost '/'",
            ),
            (
                # auto-delete is checked before exclusive, as RabbitMQ does
                {
                    "queue": "q3",
                    "durable": True,
                    "exclusive": True,
                    "auto_delete": True,
                    "arguments": QUORUM,
                },
                "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 'q3' in vhost '/'",
            ),
            (
                # refused arguments come before the properties
                {"queue": "q4", "durable": False, "arguments": {**QUORUM, "x-max-priority": 5}},
                "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q4' in vhost '/' "
                "of queue type rabbit_quorum_queue",
            ),
            (
                {"queue": "q5", "durable": True, "arguments": {**QUORUM, "x-queue-mode": "lazy"}},
                "PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue 'q5' in vhost '/' "
                "of queue type rabbit_quorum_queue",
            ),
            (
                {"queue": "q6", "durable": True, "arguments": {"x-queue-type": "bogus"}},
                "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q6' in vhost '/': "
                "\"unsupported queue type 'bogus'\"",
            ),
            (
                {"queue": "q7", "durable": True, "arguments": {"x-queue-type": 5}},
                "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q7' in vhost '/': "
                "{unacceptable_type,signedint}",
            ),
        ]
        for declare, text in cases:
            assert _refused(amqp_params, **declare) == (406, text), declare
        code, text = _refused(
            amqp_params, queue="s1", durable=True, arguments={"x-queue-type": "stream"}
        )
        assert code == 406
        assert text.startswith(
            "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 's1' in vhost '/': "
            "stream queues are not supported by Wharf; use a log topic"
        )
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            # RabbitMQ's quorum arguments that mean nothing on one node: accepted.
            ch.queue_declare(
                "ok",
                durable=True,
                arguments={
                    **QUORUM,
                    "x-quorum-initial-group-size": 3,
                    "x-max-in-memory-length": 10,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-single-active-consumer": True,
                    "x-message-ttl": 60000,
                },
            )

    await asyncio.to_thread(scenario)


async def test_redeclare_with_another_type_is_inequivalent(
    amqp_params: pika.ConnectionParameters,
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("qq", durable=True, arguments=QUORUM)
            ch.queue_declare("qq", durable=True, arguments=QUORUM)  # equivalent
            ch.queue_declare("cq", durable=True)
            # No x-queue-type is classic: an explicit classic redeclare is equivalent.
            ch.queue_declare("cq", durable=True, arguments={"x-queue-type": "classic"})
        prefix = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue"
        assert _refused(
            amqp_params, queue="qq", durable=True, arguments={"x-queue-type": "classic"}
        ) == (406, f"{prefix} 'qq' in vhost '/': received 'classic' but current is 'quorum'")
        assert _refused(amqp_params, queue="qq", durable=True) == (
            406,
            f"{prefix} 'qq' in vhost '/': received none but current is the value 'quorum' "
            "of type 'longstr'",
        )
        assert _refused(amqp_params, queue="cq", durable=True, arguments=QUORUM) == (
            406,
            f"{prefix} 'cq' in vhost '/': received the value 'quorum' of type 'longstr' "
            "but current is none",
        )

    await asyncio.to_thread(scenario)


async def test_quorum_delivery_limit_and_delivery_count_header(
    amqp_params: pika.ConnectionParameters,
) -> None:
    """As RabbitMQ 3.10: basic.get carries x-delivery-count (0 the first time), a
    consumer's redeliveries carry it, and past x-delivery-limit returns the message is
    dead-lettered with reason delivery_limit."""

    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("dlq", durable=True)
            ch.queue_declare(
                "work",
                durable=True,
                arguments={
                    **QUORUM,
                    "x-delivery-limit": 2,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": "dlq",
                },
            )
            ch.basic_publish("", "work", b"job", pika.BasicProperties(headers={"a": 1}))
            seen = []
            for _ in range(3):
                method, props, body = ch.basic_get("work")
                assert method is not None and body == b"job"
                seen.append((method.redelivered, props.headers))
                ch.basic_nack(method.delivery_tag, requeue=True)
            assert seen == [
                (False, {"a": 1, "x-delivery-count": 0}),
                (True, {"a": 1, "x-delivery-count": 1}),
                (True, {"a": 1, "x-delivery-count": 2}),
            ]
            assert ch.basic_get("work")[0] is None  # returned a 3rd time: over the limit
            method, props, _ = ch.basic_get("dlq", auto_ack=True)
            assert method is not None
            assert "x-delivery-count" not in props.headers
            assert props.headers["x-death"][0]["reason"] == "delivery_limit"

            ch.basic_publish("", "work", b"again")
            got: list[tuple[bool, Any]] = []
            for method, props, _ in ch.consume("work", inactivity_timeout=INACTIVITY_S):
                assert method is not None
                got.append((method.redelivered, props.headers))
                if len(got) == 1:
                    ch.basic_nack(method.delivery_tag, requeue=True)
                else:
                    ch.basic_ack(method.delivery_tag)
                    break
            ch.cancel()
            assert got == [(False, None), (True, {"x-delivery-count": 1})]

    await asyncio.to_thread(scenario)


async def test_quorum_type_in_http_api(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    def scenario() -> list[dict[str, Any]]:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("qq", durable=True, arguments=QUORUM)
            ch.queue_declare("cq")
        req = urllib.request.Request(f"http://127.0.0.1:{broker.http_port}/api/queues/%2F")
        req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
        with urllib.request.urlopen(req, timeout=10) as r:
            body: list[dict[str, Any]] = json.loads(r.read())
        return body

    queues = {q["name"]: q for q in await asyncio.to_thread(scenario)}
    assert queues["qq"]["type"] == "quorum"
    assert queues["qq"]["arguments"] == QUORUM
    assert queues["cq"]["type"] == "classic"


async def test_quorum_queue_keeps_transient_messages_across_restart(tmp_path: Path) -> None:
    """A quorum queue keeps every message on disk, delivery mode 1 too (RabbitMQ's
    quorum queues do); its type survives the restart."""
    port = free_port()
    settings = make_settings(tmp_path, amqp_port=port, heartbeat_s=0)
    params = pika.ConnectionParameters(
        "127.0.0.1", port, credentials=pika.PlainCredentials("guest", "guest")
    )

    def publish() -> None:
        with pika.BlockingConnection(params) as conn:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("qq", durable=True, arguments=QUORUM)
            ch.queue_declare("cq", durable=True)
            for q in ("qq", "cq"):
                ch.basic_publish("", q, b"transient", pika.BasicProperties(delivery_mode=1))

    def read() -> tuple[Any, Any]:
        with pika.BlockingConnection(params) as conn:
            ch = conn.channel()
            assert _refused(params, queue="qq", durable=True)[0] == 406  # still quorum
            return ch.basic_get("qq", auto_ack=True), ch.basic_get("cq", auto_ack=True)

    b = Broker(settings)
    await b.start()
    try:
        await asyncio.to_thread(publish)
    finally:
        await b.stop()
    b = Broker(settings)
    await b.start()
    try:
        assert b.queues["qq"].queue_type == "quorum"
        (qm, _, qbody), (cm, _, _) = await asyncio.to_thread(read)
        assert qm is not None and qbody == b"transient"
        assert cm is None  # a classic durable queue drops transient messages on restart
    finally:
        await b.stop()


async def test_native_protocol_and_http_api_apply_the_same_rules(
    broker: Broker, conn: wharf.Connection
) -> None:
    """The rules live in the core: the SDK and the HTTP API get them too."""
    with pytest.raises(wharf.WharfError) as info:
        await conn.declare_queue("nq", durable=False, arguments=QUORUM)
    assert info.value.code == 406
    assert "invalid property 'non-durable' for queue 'nq'" in str(info.value)
    await conn.declare_queue("nq", durable=True, arguments=QUORUM)
    r = await api(
        broker,
        "PUT",
        "/api/queues/%2F/hq",
        {"durable": True, "arguments": {"x-max-priority": 3, **QUORUM}},
    )
    assert r.status >= 400
    assert "invalid arg 'x-max-priority' for queue 'hq' of queue type" in r.json()["error"]
    r = await api(broker, "PUT", "/api/queues/%2F/hq", {"durable": True, "arguments": QUORUM})
    assert r.status == 201 and r.json()["type"] == "quorum"
