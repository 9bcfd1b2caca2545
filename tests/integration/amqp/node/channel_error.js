'use strict';
// Channel errors as a service meets them: checkQueue of a missing queue rejects with 404,
// the channel emits 'error' and 'close', and the connection goes on (a new channel
// declares, publishes and gets).  A publish to a missing exchange closes its channel too.
const { amqp, URL, emit, run } = require('./lib');

function watch(ch) {
  const seen = { errors: [], closed: false };
  ch.on('error', (err) => seen.errors.push({ code: err.code, classId: err.classId, methodId: err.methodId, message: err.message }));
  ch.on('close', () => {
    seen.closed = true;
  });
  return seen;
}

function closed(ch) {
  return new Promise((resolve) => ch.once('close', resolve));
}

run(async ({ missingQueue, missingExchange, queue }) => {
  const conn = await amqp.connect(URL);
  let connError = null;
  conn.on('error', (err) => {
    connError = err.message;
  });
  const first = await conn.createChannel();
  const firstSeen = watch(first);
  const firstClosed = closed(first);
  let rejected = null;
  try {
    await first.checkQueue(missingQueue);
  } catch (err) {
    rejected = { code: err.code, classId: err.classId, methodId: err.methodId, message: err.message };
  }
  await firstClosed;
  emit({ check: rejected, channel: firstSeen });

  const second = await conn.createChannel();
  const secondSeen = watch(second);
  const secondClosed = closed(second);
  second.publish(missingExchange, 'k', Buffer.from('nowhere'));
  await secondClosed;
  emit({ publish: secondSeen });

  const third = await conn.createChannel();
  await third.assertQueue(queue, { exclusive: true });
  third.sendToQueue(queue, Buffer.from('still works'));
  let got = false;
  while (got === false) got = await third.get(queue, { noAck: true });
  emit({ after: got.content.toString(), connectionError: connError });
  await conn.close();
});
