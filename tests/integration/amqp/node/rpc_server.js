'use strict';
// An RPC server: consumes requests from its queue (prefetch 1) and replies to each
// request's reply-to with its correlation id; exits after `count` requests.
const { amqp, URL, emit, run } = require('./lib');

run(async ({ queue, count }) => {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  await ch.assertQueue(queue, { durable: false });
  await ch.prefetch(1);
  let served = 0;
  const done = new Promise((resolve, reject) => {
    ch.on('error', reject);
    ch.consume(queue, (msg) => {
      const n = Number(msg.content.toString());
      ch.sendToQueue(msg.properties.replyTo, Buffer.from(String(n * n)), {
        correlationId: msg.properties.correlationId,
      });
      ch.ack(msg);
      served += 1;
      if (served === count) resolve();
    }).then(() => emit({ ready: queue }), reject);
  });
  await done;
  emit({ served });
  // The channel first: amqplib writes connection.close ahead of a channel's buffered
  // frames, and the last reply would be lost.
  await ch.close();
  await conn.close();
});
