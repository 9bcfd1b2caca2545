"""What RabbitMQ clients read from Wharf where the value's AMQP type matters, not just its
value: x-death's ``count`` is a long (``l``), as RabbitMQ writes it.

pika code runs in a worker thread (the broker serves in the test's loop).
"""

from __future__ import annotations

import asyncio

import pika
import pika.compat


async def test_x_death_count_is_a_long(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("shapes.dead")
            ch.queue_declare(
                "shapes.work",
                arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "shapes.dead"},
            )
            ch.basic_publish("", "shapes.work", b"d")
            method, _, _ = ch.basic_get("shapes.work")
            ch.basic_reject(method.delivery_tag, requeue=False)
            for _ in range(50):
                method, props, body = ch.basic_get("shapes.dead", auto_ack=True)
                if method is not None:
                    break
                conn.process_data_events(time_limit=0.1)
            assert method is not None and body == b"d"
            (death,) = props.headers["x-death"]
            # pika reads an ``l`` as its ``long`` type and an ``I`` as a plain int.
            assert isinstance(death["count"], pika.compat.long), type(death["count"])
            assert death["count"] == 1
            assert death["reason"] == "rejected"

    await asyncio.to_thread(scenario)
