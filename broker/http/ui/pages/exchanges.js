// Exchanges: list; per exchange: its bindings drawn as a graph of edges to queues,
// exchanges and topics, publish a message, delete.

import { api, enc, get } from '../api.js';
import { clear, confirmDialog, dl, field, fmtJson, h, section, status, table, writeForm } from '../dom.js';
import { link, mountList, text, VHOST, yesNo } from '../tables.js';

const SVG = 'http://www.w3.org/2000/svg';
const DEFAULT = 'amq.default';

export async function render(root, params, ctx) {
  if (params.length >= 2) return detail(root, params[0], params[1], ctx);
  const list = mountList(root, ctx, {
    title: 'Exchanges',
    heading: 'All exchanges',
    path: '/exchanges',
    sorts: [['name', 'name'], ['type', 'type'], ['vhost', 'vhost']],
    columns: [
      VHOST,
      { label: 'Name', value: (x) => link('exchanges', x.vhost, x.name || DEFAULT, x.name || '(default)') },
      text('Type', 'type'),
      yesNo('Durable', 'durable'),
      yesNo('Internal', 'internal'),
    ],
  });
  if (ctx.canWrite) root.append(declareForm(list));
  return { refresh: list.load };
}

function declareForm(list) {
  const form = writeForm([
    field('Vhost', 'vhost', { value: '/' }),
    field('Name', 'name', { required: true }),
    field('Type', 'type', { kind: 'select', options: ['direct', 'fanout', 'topic', 'headers'], value: 'direct' }),
    field('Durable', 'durable', { kind: 'checkbox', value: true }),
  ], 'Declare exchange', async (v) => {
    await api('PUT', `/exchanges/${enc(v.vhost)}/${enc(v.name)}`, { type: v.type, durable: v.durable });
    return `Exchange ${v.name} declared.`;
  }, list.load);
  return section('Declare an exchange', form);
}

// exchange -> destinations, one row per destination, edges labelled with routing keys.
export function bindingGraph(source, bindings, vhost) {
  const rowH = 52;
  const height = Math.max(1, bindings.length) * rowH + 20;
  const width = 640;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('class', 'graph');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `Bindings of exchange ${source}: ` +
    (bindings.map((b) => `${b.destination_type ?? 'queue'} ${b.destination} with key ${b.routing_key || '(empty)'}`).join('; ') || 'none'));
  const el = (tag, attrs, text) => {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  const sy = height / 2;
  el('rect', { x: 10, y: sy - 18, width: 180, height: 36, rx: 6, class: 'node exchange' });
  el('text', { x: 100, y: sy + 5, 'text-anchor': 'middle', class: 'label' }, truncate(source || '(default)', 22));
  bindings.forEach((b, i) => {
    const y = 36 + i * rowH;
    const kind = b.destination_type ?? 'queue';
    el('path', { d: `M190 ${sy} C 300 ${sy}, 300 ${y}, 420 ${y}`, class: 'edge' });
    el('text', { x: 414, y: y - 20, 'text-anchor': 'end', class: 'edge-label' }, truncate(b.routing_key || '(empty key)', 24));
    el('rect', { x: 420, y: y - 16, width: 210, height: 32, rx: kind === 'queue' ? 4 : 14, class: `node ${kind}` });
    el('text', { x: 525, y: y + 5, 'text-anchor': 'middle', class: 'label' }, `${kind}: ${truncate(b.destination, 20)}`);
  });
  const legend = table(`Bindings of ${source || '(default)'}`, [
    { label: 'Destination', value: (b) => {
      const kind = b.destination_type ?? 'queue';
      const target = kind === 'queue' ? 'queues' : kind === 'exchange' ? 'exchanges' : 'topics';
      return [`${kind} `, link(target, vhost, b.destination)];
    } },
    { label: 'Routing key', value: (b) => b.routing_key },
    { label: 'Arguments', value: (b) => fmtJson(b.arguments) },
  ], bindings, 'No bindings from this exchange.');
  return h('div', { class: 'graph-wrap' }, bindings.length ? svg : null, legend);
}

function truncate(s, n) {
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

async function detail(root, vhost, name, ctx) {
  const base = `/exchanges/${enc(vhost)}/${enc(name)}`;
  const facts = h('div');
  const graph = h('div');
  root.append(
    h('p', {}, h('a', { href: '#/exchanges' }, '← All exchanges')),
    h('h1', {}, `Exchange ${name === DEFAULT ? '(default)' : name}`, h('span', { class: 'muted' }, ` in vhost ${vhost}`)),
    section('Exchange', facts),
    section('Bindings', graph),
  );
  if (ctx.canWrite) root.append(publishSection(base), deleteSection(base, name));
  const sourceName = name === DEFAULT ? '' : name;
  const bindingsPath = ctx.caps.has('GET', '/exchanges/{vhost}/{name}/bindings/source')
    ? `${base}/bindings/source` : `/bindings/${enc(vhost)}`;
  return {
    async refresh() {
      const x = await get(base);
      clear(facts, dl([
        ['Type', x.type], ['Durable', x.durable ? 'yes' : 'no'], ['Auto-delete', x.auto_delete ? 'yes' : 'no'],
        ['Internal', x.internal ? 'yes' : 'no'], ['Arguments', fmtJson(x.arguments)],
      ]));
      const bs = (await get(bindingsPath)).filter((b) => b.source === sourceName);
      clear(graph, bindingGraph(sourceName, bs, vhost));
    },
  };
}

function publishSection(base) {
  const form = writeForm([
    field('Routing key', 'routing_key'),
    field('Payload', 'payload', { kind: 'textarea' }),
    field('Headers (JSON)', 'headers', { kind: 'textarea', value: '{}' }),
  ], 'Publish', async (v) => {
    const r = await api('POST', `${base}/publish`, {
      routing_key: v.routing_key, payload: v.payload, payload_encoding: 'string',
      properties: { headers: JSON.parse(v.headers || '{}') },
    });
    return r.routed ? 'Published and routed.' : 'Published, but no queue or topic was bound for it.';
  });
  return section('Publish a message', form);
}

function deleteSection(base, name) {
  const st = status();
  const del = h('button', { type: 'button', class: 'danger write' }, 'Delete exchange');
  del.addEventListener('click', async () => {
    if (!(await confirmDialog(`Delete exchange ${name} and its bindings?`, 'Delete'))) return;
    try {
      await api('DELETE', base);
      location.hash = '#/exchanges';
    } catch (err) { st.fail(err); }
  });
  return section('Delete', del, st);
}
