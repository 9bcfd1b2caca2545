'use strict';
// Mandatory publishes on a ConfirmChannel: an unroutable one comes back in a 'return'
// event before its confirm; a routable one is confirmed and not returned.
const { amqp, URL, emit, run } = require('./lib');

run(async ({ queue, unroutable }) => {
  const conn = await amqp.connect(URL);
  const ch = await conn.createConfirmChannel();
  await ch.assertQueue(queue, { exclusive: true });
  const events = [];
  ch.on('return', (msg) => {
    events.push({
      event: 'return',
      replyCode: msg.fields.replyCode,
      replyText: msg.fields.replyText,
      exchange: msg.fields.exchange,
      routingKey: msg.fields.routingKey,
      body: msg.content.toString(),
      messageId: msg.properties.messageId,
    });
  });
  const confirmed = (key, body) =>
    new Promise((resolve, reject) => {
      ch.publish('', key, Buffer.from(body), { mandatory: true, messageId: body }, (err) =>
        err ? reject(err) : resolve(events.push({ event: 'confirm', body })),
      );
    });
  await confirmed(unroutable, 'lost');
  await confirmed(queue, 'kept');
  emit({ events });
  const got = await ch.get(queue, { noAck: true });
  emit({ got: got && got.content.toString() });
  await conn.close();
});
