'use strict';
// An RPC client over direct reply-to: consumes amq.rabbitmq.reply-to (no-ack), sends its
// requests with replyTo set to it, and matches the replies by correlation id.
const { amqp, URL, emit, run } = require('./lib');

const REPLY_TO = 'amq.rabbitmq.reply-to';

run(async ({ queue, count }) => {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  const pending = new Map();
  const replyTos = new Set();
  await ch.consume(
    REPLY_TO,
    (msg) => {
      const resolve = pending.get(msg.properties.correlationId);
      if (resolve === undefined) return;
      pending.delete(msg.properties.correlationId);
      resolve(msg.content.toString());
    },
    { noAck: true },
  );
  const calls = [];
  for (let i = 1; i <= count; i++) {
    const correlationId = `call-${i}`;
    calls.push(new Promise((resolve) => pending.set(correlationId, resolve)));
    ch.sendToQueue(queue, Buffer.from(String(i)), { correlationId, replyTo: REPLY_TO });
  }
  const results = await Promise.all(calls);
  emit({ results: results.map(Number) });
  await conn.close();
});
