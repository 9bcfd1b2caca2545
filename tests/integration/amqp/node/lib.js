'use strict';
// Shared by the scenario scripts: the broker URL, JSON-lines output, field-table values
// in a form JSON can carry, and a hard deadline so that a stuck script cannot hang a test.
const amqp = require('amqplib');

const URL = process.env.WHARF_AMQP_URL;
// The whole script's budget; the pytest side waits a little longer.
const DEADLINE_MS = Number(process.env.WHARF_NODE_DEADLINE_MS || 30000);

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

// Field-table values as JSON: buffers and amqplib's typed values ({'!': type, value})
// are tagged so that the Python side can compare them.
function plain(value) {
  if (Buffer.isBuffer(value)) return { $bytes: value.toString('base64') };
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === 'object') {
    if (Object.hasOwn(value, '!')) return { $type: value['!'], value: plain(value.value) };
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = plain(v);
    return out;
  }
  if (typeof value === 'bigint') return { $bigint: value.toString() };
  return value;
}

function describe(msg) {
  const p = msg.properties;
  return {
    body: msg.content.toString('base64'),
    routingKey: msg.fields.routingKey,
    exchange: msg.fields.exchange,
    redelivered: msg.fields.redelivered,
    properties: {
      contentType: p.contentType,
      contentEncoding: p.contentEncoding,
      deliveryMode: p.deliveryMode,
      priority: p.priority,
      correlationId: p.correlationId,
      replyTo: p.replyTo,
      expiration: p.expiration,
      messageId: p.messageId,
      timestamp: p.timestamp,
      type: p.type,
      userId: p.userId,
      appId: p.appId,
      headers: plain(p.headers),
    },
  };
}

function config() {
  return JSON.parse(process.argv[2] || '{}');
}

// Run main(); exit 0 when it resolves, 1 with the error on stderr when it fails, 2 when
// the deadline passes.
function run(main) {
  const timer = setTimeout(() => {
    process.stderr.write(`deadline of ${DEADLINE_MS} ms passed\n`);
    process.exit(2);
  }, DEADLINE_MS);
  main(config()).then(
    () => {
      clearTimeout(timer);
      process.exit(0);
    },
    (err) => {
      process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
      process.exit(1);
    },
  );
}

module.exports = { amqp, URL, emit, describe, plain, run };
