'use strict';
// Preloaded (node --require) into amqplib's own test suite by amqplib_suite.py:
// - AMQPLIB_REDIRECT_PORT: connections to 5672 go to that port instead.  Only
//   channel_api.test.js reads $URL; the callback API and connect tests use amqplib's
//   default, amqp://localhost.
// - AMQPLIB_SKIP: test names ('|'-separated) to skip: Wharf's documented deviations
//   (docs/amqp.md) whose failures would hang the rest of their file.
const net = require('node:net');
const test = require('node:test');

const port = Number(process.env.AMQPLIB_REDIRECT_PORT || 0);
if (port) {
  const connect = net.connect;
  net.connect = net.createConnection = function (...args) {
    if (args[0] && typeof args[0] === 'object' && Number(args[0].port) === 5672) {
      args[0] = { ...args[0], port };
    }
    return connect.apply(this, args);
  };
}

const skip = new Set((process.env.AMQPLIB_SKIP || '').split('|').filter(Boolean));
if (skip.size) {
  const it = test.it;
  const wrapped = function (name, ...rest) {
    return skip.has(name) ? it.skip(name, ...rest) : it.call(this, name, ...rest);
  };
  Object.assign(wrapped, it);
  test.it = test.test = wrapped;
}
