'use strict';
// A consumer whose queue is deleted under it: amqplib calls the consume callback with
// null (the broker's basic.cancel); the channel stays open and can consume again.
const { amqp, URL, emit, run } = require('./lib');

run(async ({ queue, next }) => {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  ch.on('error', (err) => emit({ channelError: err.message }));
  await ch.assertQueue(queue, { durable: true });
  const cancelled = new Promise((resolve) => {
    ch.consume(queue, (msg) => {
      if (msg === null) resolve();
    }).then((ok) => emit({ consuming: ok.consumerTag }));
  });
  await cancelled;
  emit({ cancelled: true });
  // The channel is still usable.
  await ch.assertQueue(next, { exclusive: true });
  ch.sendToQueue(next, Buffer.from('after cancel'));
  const got = await new Promise((resolve) => {
    ch.consume(next, (msg) => resolve(msg.content.toString()), { noAck: true });
  });
  emit({ after: got });
  await conn.close();
});
