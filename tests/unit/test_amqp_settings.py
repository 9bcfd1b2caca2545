"""amqp_port: RabbitMQ's 5672 by default, 0 turns the AMQP listener off."""

from __future__ import annotations

import pytest

from wharf.broker.config import ConfigError, Settings, load_settings


def test_amqp_port_defaults_to_rabbitmqs_and_reads_the_environment() -> None:
    assert Settings().amqp_port == 5672 and Settings().amqp_enabled
    off = load_settings(None, {}, environ={"WHARF_AMQP_PORT": "0"})
    assert off.amqp_port == 0 and not off.amqp_enabled
    assert load_settings(None, {"amqp_port": 5673}, environ={}).amqp_port == 5673


def test_amqp_port_must_differ_from_the_other_listeners() -> None:
    with pytest.raises(ConfigError, match="port and amqp_port are both 5680"):
        load_settings(None, {"amqp_port": 5680}, environ={})


def test_amqps_port_defaults_to_rabbitmqs_and_opens_only_with_tls() -> None:
    assert Settings().amqps_port == 5671
    assert not Settings().amqps_enabled  # no certificate: no AMQP over TLS
    with_tls = Settings(tls_cert_file="c.pem", tls_key_file="k.pem")
    assert with_tls.amqps_enabled
    with_tls.amqps_port = 0
    assert not with_tls.amqps_enabled
    env = load_settings(None, {}, environ={"WHARF_AMQPS_PORT": "5700"})
    assert env.amqps_port == 5700
    assert load_settings(None, {"amqps_port": 0}, environ={}).amqps_port == 0
