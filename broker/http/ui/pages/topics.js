// Topics: list and create; per topic: partitions (earliest, latest, bytes, segments),
// settings, browse records by offset or timestamp, alter, delete.

import { api, enc, get } from '../api.js';
import { clear, confirmDialog, dl, field, fmtBytes, fmtJson, fmtNum, formValues, h, section, status, table, writeForm } from '../dom.js';
import { keyValues } from './common.js';
import { count, mountList, nameLink, VHOST } from '../tables.js';

export async function render(root, params, ctx) {
  if (params.length >= 2) return detail(root, params[0], params[1], ctx);
  const list = mountList(root, ctx, {
    title: 'Topics',
    heading: 'All topics',
    path: '/topics',
    empty: 'No topics.',
    sorts: [['name', 'name'], ['partitions', 'partitions'], ['vhost', 'vhost']],
    columns: [
      VHOST,
      nameLink('topics'),
      count('Partitions', 'partitions'),
      { label: 'Bytes', num: true, value: (t) => fmtBytes((t.offsets || []).reduce((a, p) => a + (p.bytes || 0), 0)) },
      { label: 'Cleanup', value: (t) => (t.config || {}).cleanup_policy },
      { label: 'Retention (ms)', num: true, value: (t) => fmtNum((t.config || {}).retention_ms) },
    ],
  });
  if (ctx.canWrite) root.append(createForm(list));
  return { refresh: list.load };
}

function createForm(list) {
  const form = writeForm([
    field('Vhost', 'vhost', { value: '/' }),
    field('Name', 'name', { required: true }),
    field('Partitions', 'partitions', { kind: 'number', value: '1' }),
    field('Settings (key=value, one per line)', 'config', { kind: 'textarea', hint: 'e.g. retention_ms=86400000 or cleanup_policy=compact' }),
  ], 'Create topic', async (v) => {
    await api('PUT', `/topics/${enc(v.vhost)}/${enc(v.name)}`, { partitions: Number(v.partitions) || 1, config: keyValues(v.config) });
    return `Topic ${v.name} ready.`;
  }, list.load);
  return section('Create a topic', form);
}

async function detail(root, vhost, name, ctx) {
  const base = `/topics/${enc(vhost)}/${enc(name)}`;
  const parts = h('div');
  const config = h('div');
  root.append(
    h('p', {}, h('a', { href: '#/topics' }, '← All topics')),
    h('h1', {}, `Topic ${name}`, h('span', { class: 'muted' }, ` in vhost ${vhost}`)),
    section('Partitions', parts),
    section('Settings', config),
    browseSection(base, ctx),
  );
  if (ctx.canWrite) root.append(alterSection(base), deleteSection(base, name));
  return {
    async refresh() {
      const t = await get(base);
      clear(parts, table('Partitions', [
        { label: 'Partition', num: true, value: (p) => String(p.partition) },
        { label: 'Earliest', num: true, value: (p) => fmtNum(p.earliest) },
        { label: 'Latest', num: true, value: (p) => fmtNum(p.latest) },
        { label: 'Records', num: true, value: (p) => fmtNum(p.latest - p.earliest) },
        { label: 'Bytes', num: true, value: (p) => fmtBytes(p.bytes) },
        { label: 'Segments', num: true, value: (p) => fmtNum(p.segments) },
      ], t.offsets || []));
      clear(config, dl(Object.entries(t.config || {}).map(([k, v]) => [k, typeof v === 'string' ? v : fmtJson(v)])));
    },
  };
}

function decode(part) {
  if (!part) return '(null)';
  return part.text ?? `base64: ${part.base64}`;
}

function browseSection(base, ctx) {
  const out = h('div');
  if (!ctx.caps.has('GET', '/topics/{vhost}/{name}/records')) {
    return section('Browse records', h('p', { class: 'muted' }, 'This broker\'s API has no record browsing (GET …/records).'));
  }
  const st = status();
  const form = h('form', { class: 'inline' },
    field('Partition', 'partition', { kind: 'number', value: '0' }),
    field('From', 'from', { kind: 'select', options: [['offset', 'offset'], ['timestamp', 'timestamp (epoch ms)']], value: 'offset' }),
    field('Offset or timestamp', 'value', { kind: 'number', value: '0' }),
    field('Records', 'limit', { kind: 'number', value: '20' }),
    // As a consumer's fetch: read_committed hides open and aborted transactions.
    field('Isolation', 'isolation_level', { kind: 'select', options: [['read_uncommitted', 'read uncommitted'], ['read_committed', 'read committed']], value: 'read_uncommitted' }),
    h('button', { type: 'submit' }, 'Browse'), st);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = formValues(form);
    const q = new URLSearchParams({ partition: v.partition, limit: v.limit, isolation_level: v.isolation_level });
    q.set(v.from, v.value);
    try {
      const recs = await get(`${base}/records?${q}`);
      st.ok(`${recs.length} record(s).`);
      clear(out, table('Records', [
        { label: 'Offset', num: true, value: (r) => String(r.offset) },
        { label: 'Timestamp', value: (r) => new Date(r.timestamp).toISOString() },
        { label: 'Key', value: (r) => decode(r.key) },
        { label: 'Value', value: (r) => h('code', {}, decode(r.value)) },
        { label: 'Headers', value: (r) => fmtJson(r.headers) },
      ], recs, 'No records there.'));
    } catch (err) { st.fail(err); }
  });
  return section('Browse records', form, out);
}

function alterSection(base) {
  const form = writeForm([
    field('New partition count (empty: unchanged; grows only)', 'partitions', { kind: 'number' }),
    field('Settings to change (key=value, one per line)', 'config', { kind: 'textarea' }),
  ], 'Alter topic', async (v) => {
    const body = {};
    if (v.partitions) body.partitions = Number(v.partitions);
    const config = keyValues(v.config);
    if (Object.keys(config).length) body.config = config;
    await api('PATCH', base, body);
    return 'Topic changed.';
  });
  return section('Alter', form);
}

function deleteSection(base, name) {
  const st = status();
  const del = h('button', { type: 'button', class: 'danger write' }, 'Delete topic');
  del.addEventListener('click', async () => {
    if (!(await confirmDialog(`Delete topic ${name} and all its records?`, 'Delete'))) return;
    try {
      await api('DELETE', base);
      location.hash = '#/topics';
    } catch (err) { st.fail(err); }
  });
  return section('Delete', del, st);
}
