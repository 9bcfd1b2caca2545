// Queues: a paged list; per queue: depth and message-rate charts, consumers, bindings,
// effective policy and arguments, peek (text / JSON / hex), publish a test message, purge,
// delete, replay dead letters.

import { api, enc, get } from '../api.js';
import { LiveChart } from '../charts.js';
import { clear, confirmDialog, dl, field, fmtJson, fmtNum, formValues, h, hexDump, section, status, table, writeForm } from '../dom.js';
import { count, link, mountList, nameLink, VHOST, yesNo } from '../tables.js';

// The queue's message_stats counters charted as rates, and their legends.
const QUEUE_RATES = ['publish', 'deliver_get', 'ack', 'redeliver'];
const QUEUE_RATES_LABELS = ['published', 'delivered', 'acked', 'redelivered'];

export async function render(root, params, ctx) {
  if (params.length >= 2) return detail(root, params[0], params[1], ctx);
  const list = mountList(root, ctx, {
    title: 'Queues',
    heading: 'All queues',
    path: '/queues',
    empty: 'No queues.',
    sorts: [['name', 'name'], ['messages_ready', 'ready'], ['messages_unacked', 'unacked'], ['consumers', 'consumers'], ['vhost', 'vhost']],
    columns: [
      VHOST,
      nameLink('queues'),
      yesNo('Durable', 'durable'),
      { label: 'Policy', value: (q) => q.policy ?? '' },
      count('Ready', 'messages_ready'),
      count('Unacked', 'messages_unacked'),
      count('Consumers', 'consumers'),
    ],
  });
  if (ctx.canWrite) root.append(declareForm(list));
  return { refresh: list.load };
}

function declareForm(list) {
  const form = writeForm([
    field('Vhost', 'vhost', { value: '/' }),
    field('Name', 'name', { required: true }),
    field('Durable', 'durable', { kind: 'checkbox', value: true }),
    field('Arguments (JSON)', 'arguments', { kind: 'textarea', value: '{}' }),
  ], 'Declare queue', async (v) => {
    const args = JSON.parse(v.arguments || '{}');
    await api('PUT', `/queues/${enc(v.vhost)}/${enc(v.name)}`, { durable: v.durable, arguments: args });
    return `Queue ${v.name} declared.`;
  }, list.load);
  return section('Declare a queue', form);
}

async function detail(root, vhost, name, ctx) {
  const base = `/queues/${enc(vhost)}/${enc(name)}`;
  const depth = new LiveChart(`queue.${vhost}.${name}.depth`, 'Queue depth', ['ready', 'unacked'], { mode: 'gauge', unit: 'messages' });
  const rates = new LiveChart(`queue.${vhost}.${name}.rates`, 'Message rates', QUEUE_RATES_LABELS);
  const facts = h('div');
  const args = h('div');
  const consumers = h('div');
  const bindings = h('div');
  root.append(
    h('p', {}, h('a', { href: '#/queues' }, '← All queues')),
    h('h1', {}, `Queue ${name}`, h('span', { class: 'muted' }, ` in vhost ${vhost}`)),
    h('div', { class: 'grid' }, section('Queue', facts), section('Policy and arguments', args)),
    section('Rates', depth.el, rates.el),
    section('Consumers', consumers),
    section('Bindings', bindings),
    peekSection(base),
  );
  if (ctx.canWrite) {
    root.append(publishSection(vhost, name), replaySection(base), dangerSection(base, name));
  }
  const bindingsPath = ctx.caps.has('GET', '/queues/{vhost}/{name}/bindings')
    ? `${base}/bindings` : `/bindings/${enc(vhost)}`;
  return {
    async refresh() {
      const q = await get(base);
      const t = Date.now() / 1000;
      depth.push([q.messages_ready, q.messages_unacked], t);
      // Per-queue counters (RabbitMQ's message_stats names), where the broker's API
      // gives them; the chart turns two readings into rates.
      const ms = q.message_stats;
      rates.el.hidden = !ms;
      if (ms) rates.push(QUEUE_RATES.map((k) => ms[k]), t);
      clear(facts, dl([
        ['Durable', q.durable ? 'yes' : 'no'],
        ['Exclusive', q.exclusive ? 'yes' : 'no'],
        ['Auto-delete', q.auto_delete ? 'yes' : 'no'],
        ['Ready', fmtNum(q.messages_ready)],
        ['Unacked', fmtNum(q.messages_unacked)],
        ['Consumers', fmtNum(q.consumers)],
      ]));
      clear(args, dl([
        ['Policy', q.policy ?? 'none'],
        ['Arguments', fmtJson(q.arguments)],
        ['Effective arguments', fmtJson(q.effective_arguments ?? q.arguments)],
      ]));
      const cs = (await get(`/consumers/${enc(vhost)}`)).filter((c) => c.queue === name);
      clear(consumers, table('Consumers', [
        { label: 'Tag', value: (c) => c.consumer_tag },
        { label: 'Connection', value: (c) => h('a', { href: `#/connections/${encodeURIComponent(c.connection)}` }, c.connection) },
        { label: 'Prefetch', num: true, value: (c) => fmtNum(c.prefetch) },
        { label: 'Unacked', num: true, value: (c) => fmtNum(c.unacked) },
        { label: 'No ack', value: (c) => (c.no_ack ? 'yes' : 'no') },
      ], cs, 'No consumers.'));
      let bs = await get(bindingsPath);
      bs = bs.filter((b) => b.destination === name && (b.destination_type ?? 'queue') === 'queue');
      clear(bindings, table('Bindings', [
        { label: 'From exchange', value: (b) => (b.source === '' ? '(default)' : link('exchanges', vhost, b.source)) },
        { label: 'Routing key', value: (b) => b.routing_key },
        { label: 'Arguments', value: (b) => fmtJson(b.arguments) },
      ], bs, 'No bindings.'));
    },
    destroy() { depth.destroy(); rates.destroy(); },
  };
}

function b64Bytes(b64) {
  const bin = atob(b64);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function peekSection(base) {
  const out = h('div');
  const st = status();
  const form = h('form', { class: 'inline' },
    field('Messages', 'count', { kind: 'number', value: '5' }),
    field('Show bodies as', 'view', { kind: 'select', options: [['text', 'text'], ['json', 'JSON'], ['hex', 'hex']], value: 'text' }),
    h('button', { type: 'submit' }, 'Peek'), st);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = formValues(form);
    try {
      const msgs = await api('POST', `${base}/get`, { count: Number(v.count) || 1, encoding: 'base64' });
      st.ok(`${msgs.length} message(s), not consumed.`);
      clear(out, msgs.map((m, i) => {
        const bytes = b64Bytes(m.payload);
        let body;
        const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
        if (v.view === 'hex') body = hexDump(bytes);
        else if (v.view === 'json') {
          try { body = JSON.stringify(JSON.parse(text), null, 2); } catch { body = `(not JSON) ${text}`; }
        } else body = text;
        return h('article', { class: 'message', 'aria-label': `Message ${i + 1}` },
          dl([
            ['Routing key', m.routing_key],
            ['Exchange', m.exchange || '(default)'],
            ['Size', `${m.payload_bytes} bytes`],
            ['Delivery count', String(m.delivery_count)],
            ['Properties', fmtJson(m.properties)],
          ]),
          h('pre', { class: 'body', tabindex: '0' }, body));
      }));
    } catch (err) { st.fail(err); }
  });
  return section('Peek messages', h('p', { class: 'muted' }, 'Shows messages at the head of the queue without taking them.'), form, out);
}

function publishSection(vhost, name) {
  const form = writeForm([
    field('Payload', 'payload', { kind: 'textarea', value: '' }),
    field('Headers (JSON)', 'headers', { kind: 'textarea', value: '{}' }),
    field('Persistent', 'persistent', { kind: 'checkbox', value: true }),
  ], 'Publish to this queue', async (v) => {
    const headers = JSON.parse(v.headers || '{}');
    const properties = { headers };
    if (v.persistent) properties.delivery_mode = 2;
    const r = await api('POST', `/exchanges/${enc(vhost)}/amq.default/publish`, {
      routing_key: name, payload: v.payload, payload_encoding: 'string', properties,
    });
    return r.routed ? 'Published.' : 'Not routed.';
  });
  return section('Publish a test message', h('p', { class: 'muted' }, 'Through the default exchange, with the queue name as routing key.'), form);
}

function replaySection(base) {
  const form = writeForm([
    field('Move to queue (empty: the queue each died in)', 'target'),
    field('Only this last death reason', 'reason', { kind: 'select', options: [['', 'any'], 'rejected', 'expired', 'maxlen', 'delivery_limit'] }),
    field('At most (0: all)', 'limit', { kind: 'number', value: '0' }),
    field('Skip messages that died more often than (0: no limit)', 'max_deaths', { kind: 'number', value: '0' }),
  ], 'Replay dead letters', async (v) => {
    const body = { limit: Number(v.limit) || 0, max_deaths: Number(v.max_deaths) || 0 };
    if (v.target) body.target = v.target;
    if (v.reason) body.reason = v.reason;
    const r = await api('POST', `${base}/replay`, body);
    return `Moved ${r.moved} message(s) back where they died.`;
  });
  return section('Replay dead letters', h('p', { class: 'muted' }, 'Moves dead-lettered messages out of this queue back to the queue each last died in, or to the queue named; messages that do not match stay in place.'), form);
}

function dangerSection(base, name) {
  const st = status();
  const purge = h('button', { type: 'button', class: 'danger write' }, 'Purge');
  const del = h('button', { type: 'button', class: 'danger write' }, 'Delete queue');
  purge.addEventListener('click', async () => {
    if (!(await confirmDialog(`Purge queue ${name}? Its ready messages are dropped.`, 'Purge'))) return;
    try {
      const r = await api('DELETE', `${base}/contents`);
      st.ok(`Purged ${r.messages} message(s).`);
    } catch (err) { st.fail(err); }
  });
  del.addEventListener('click', async () => {
    if (!(await confirmDialog(`Delete queue ${name} and its messages?`, 'Delete'))) return;
    try {
      await api('DELETE', base);
      location.hash = '#/queues';
    } catch (err) { st.fail(err); }
  });
  return section('Purge or delete', h('div', { class: 'actions' }, purge, del), st);
}
