"""The AMQP 0-9-1 wire adapter: RabbitMQ clients on the protocol-neutral core."""
