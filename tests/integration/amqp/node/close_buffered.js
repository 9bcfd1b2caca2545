'use strict';
// Publishes until amqplib's channel buffer is full, then closes the connection at once:
// amqplib writes connection.close before the buffered publishes, and the close must still
// end cleanly (close-ok, no ECONNRESET).
const { amqp, URL, emit, run } = require('./lib');

run(async ({ queue }) => {
  const conn = await amqp.connect(URL);
  const errors = [];
  conn.on('error', (err) => errors.push(err.message));
  const ch = await conn.createChannel();
  await ch.assertQueue(queue, { durable: false });
  let buffered = 0;
  while (ch.sendToQueue(queue, Buffer.from('x'.repeat(100)))) buffered++;
  await conn.close();
  emit({ buffered, errors });
});
