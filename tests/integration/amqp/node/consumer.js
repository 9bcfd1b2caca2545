'use strict';
// A worker: prefetch, consume with acks.  With the prefetch window full it checks that
// no more were delivered (the rest are still ready in the queue), nacks the first message
// with requeue and acks the others; the requeued one comes back marked redelivered.
const { amqp, URL, emit, describe, run } = require('./lib');

run(async ({ queue, prefetch, count }) => {
  const conn = await amqp.connect(URL);
  const ch = await conn.createChannel();
  await ch.prefetch(prefetch);
  await ch.assertQueue(queue, { durable: true });
  const held = [];
  const seen = new Set();
  let requeued = null;
  let windowChecked = false;
  const done = new Promise((resolve, reject) => {
    ch.on('error', reject);
    ch.consume(queue, (msg) => {
      if (msg === null) return reject(new Error('consumer cancelled'));
      const id = msg.properties.messageId;
      if (!windowChecked) {
        held.push(msg);
        if (held.length < prefetch) return;
        windowChecked = true;
        // A round trip on the same channel: deliveries past the window would come first.
        ch.checkQueue(queue).then((ok) => {
          emit({ window: held.length, ready: ok.messageCount });
          requeued = held[0].properties.messageId;
          ch.nack(held[0], false, true);
          for (const m of held.slice(1)) {
            emit({ message: describe(m) });
            seen.add(m.properties.messageId);
            ch.ack(m);
          }
        }, reject);
        return;
      }
      emit({ message: describe(msg) });
      if (id === requeued) emit({ requeued: id, redelivered: msg.fields.redelivered });
      seen.add(id);
      ch.ack(msg);
      if (seen.size === count) resolve();
    });
  });
  await done;
  await ch.close();
  await conn.close();
});
