'use strict';
// A publishing service: declares its topology, publishes persistent messages with every
// basic property and typed headers on a ConfirmChannel, and waits for the confirms.
const { amqp, URL, emit, run } = require('./lib');

function body(i) {
  const all = Buffer.alloc(256);
  for (let b = 0; b < 256; b++) all[b] = b;
  return Buffer.concat([all, Buffer.from(`#${i}`)]);
}

run(async ({ exchange, queue, bindingKey, count }) => {
  const conn = await amqp.connect(URL);
  const ch = await conn.createConfirmChannel();
  await ch.assertExchange(exchange, 'topic', { durable: true });
  await ch.assertQueue(queue, { durable: true });
  await ch.bindQueue(queue, exchange, bindingKey);
  for (let i = 0; i < count; i++) {
    ch.publish(exchange, `orders.eu.${i}`, body(i), {
      persistent: true,
      contentType: 'application/octet-stream',
      contentEncoding: 'identity',
      correlationId: `corr-${i}`,
      messageId: `msg-${i}`,
      replyTo: 'replies',
      expiration: '600000',
      timestamp: 1765040400 + i,
      type: 'order.created',
      userId: 'guest',
      appId: 'node-shop',
      priority: 3,
      headers: {
        s: 'text é',
        n: i,
        neg: -70000,
        big: 2 ** 40,
        pi: 3.25,
        yes: true,
        none: null,
        list: [1, 'two', [false, { deep: 'x' }]],
        nested: { k: 'v', deeper: { x: 1, arr: ['a', 'b'] } },
        when: { '!': 'timestamp', value: 1765040400 },
        dec: { '!': 'decimal', value: { places: 2, digits: 1234 } },
        raw: Buffer.from([0, 255, 16]),
      },
    });
  }
  await ch.waitForConfirms();
  emit({ confirmed: count });
  await conn.close();
});
