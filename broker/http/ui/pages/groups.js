// Consumer groups: list; per group: state, members and their assignment, lag per
// partition with a lag chart, reset offsets with a dry-run preview before applying.

import { api, enc, get } from '../api.js';
import { LiveChart } from '../charts.js';
import { clear, dl, field, fmtNum, formValues, h, section, status, table } from '../dom.js';
import { count, link, mountList, nameLink, text, VHOST } from '../tables.js';

export async function render(root, params, ctx) {
  if (params.length >= 2) return detail(root, params[0], params[1], ctx);
  const list = mountList(root, ctx, {
    title: 'Consumer groups',
    heading: 'All groups',
    path: '/groups',
    empty: 'No consumer groups.',
    sorts: [['group', 'group'], ['state', 'state'], ['members', 'members'], ['vhost', 'vhost']],
    columns: [
      VHOST,
      nameLink('groups', 'Group', 'group'),
      text('State', 'state'),
      count('Members', 'members'),
      count('Generation', 'generation'),
      text('Strategy', 'strategy'),
    ],
  });
  return { refresh: list.load };
}

async function detail(root, vhost, name, ctx) {
  const base = `/groups/${enc(vhost)}/${enc(name)}`;
  const lag = new LiveChart(`group.${vhost}.${name}.lag`, 'Lag', ['total lag', 'largest partition lag'], { mode: 'gauge', unit: 'records' });
  const facts = h('div');
  const members = h('div');
  const offsets = h('div');
  root.append(
    h('p', {}, h('a', { href: '#/groups' }, '← All groups')),
    h('h1', {}, `Consumer group ${name}`, h('span', { class: 'muted' }, ` in vhost ${vhost}`)),
    section('Group', facts),
    section('Members and assignment', members),
    section('Lag per partition', offsets, lag.el),
  );
  const reset = ctx.canWrite ? resetSection(base, ctx) : null;
  if (reset) root.append(reset);
  return {
    async refresh() {
      const g = await get(base);
      const rows = g.offsets || [];
      if (reset) reset.setTopics([...new Set(rows.map((o) => o.topic))]);
      lag.push([rows.reduce((a, o) => a + (o.lag || 0), 0), rows.reduce((a, o) => Math.max(a, o.lag || 0), 0)]);
      clear(facts, dl([['State', g.state], ['Generation', String(g.generation)], ['Strategy', g.strategy ?? '—'], ['Members', String((g.members || []).length)]]));
      clear(members, table('Members', [
        { label: 'Member', value: (m) => m.member_id },
        { label: 'Instance', value: (m) => m.instance_id },
        { label: 'Host', value: (m) => m.client_host },
        { label: 'Topics', value: (m) => (m.topics || []).join(', ') },
        { label: 'Assignment', value: (m) => (m.assignment || []).map(([t, ps]) => `${t}: ${ps.join(', ')}`).join('; ') },
      ], g.members || [], 'No members: the group is empty.'));
      clear(offsets, table('Offsets', [
        { label: 'Topic', value: (o) => link('topics', vhost, o.topic) },
        { label: 'Partition', num: true, value: (o) => String(o.partition) },
        { label: 'Committed', num: true, value: (o) => (o.committed < 0 ? '—' : fmtNum(o.committed)) },
        { label: 'Latest', num: true, value: (o) => fmtNum(o.latest) },
        { label: 'Lag', num: true, value: (o) => fmtNum(o.lag) },
        { label: 'Member', value: (o) => o.member ?? '—' },
      ], rows, 'No committed offsets.'));
    },
    destroy() { lag.destroy(); },
  };
}

function resetSection(base, ctx) {
  const dry = ctx.caps.schemaField('ResetOffsets', 'dry_run');
  const st = status();
  const preview = h('div', { class: 'preview' });
  const topicField = field('Topic', 'topic', { kind: 'select', options: [] });
  const topicSelect = topicField.querySelector('select');
  const form = h('form', {},
    topicField,
    field('Reset to', 'to', { kind: 'select', options: ['earliest', 'latest', 'offset', 'timestamp'], value: 'earliest' }),
    field('Offset or timestamp (epoch ms)', 'value', { kind: 'number', value: '0' }),
    field('Partitions (comma separated; empty: all)', 'partitions'));
  const previewBtn = h('button', { type: 'button', class: 'write', disabled: !dry }, 'Preview (dry run)');
  const applyBtn = h('button', { type: 'button', class: 'danger write', disabled: dry }, 'Apply reset');
  const body = () => {
    const v = formValues(form);
    const out = { topic: v.topic, to: v.to };
    if (v.to === 'offset' || v.to === 'timestamp') out.value = Number(v.value);
    const ps = v.partitions.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
    if (ps.length) out.partitions = ps;
    return out;
  };
  const show = (r, title) => clear(preview, h('h3', {}, title), table(title, [
    { label: 'Topic', value: (o) => o.topic },
    { label: 'Partition', num: true, value: (o) => String(o.partition) },
    { label: 'New offset', num: true, value: (o) => fmtNum(o.offset) },
  ], r.offsets || []));
  form.addEventListener('input', () => { if (dry) applyBtn.disabled = true; clear(preview); });
  previewBtn.addEventListener('click', async () => {
    try {
      const r = await api('POST', `${base}/reset-offsets`, { ...body(), dry_run: true });
      show(r, 'Dry run: the new positions (not applied)');
      st.ok('Preview ready: apply to commit these positions.');
      applyBtn.disabled = false;
    } catch (err) { st.fail(err); }
  });
  applyBtn.addEventListener('click', async () => {
    try {
      const r = await api('POST', `${base}/reset-offsets`, body());
      show(r, 'Applied: the committed positions');
      st.ok('Offsets reset.');
      applyBtn.disabled = dry;
    } catch (err) { st.fail(err); }
  });
  const el = section('Reset offsets',
    h('p', { class: 'muted' }, dry
      ? 'Only for a group without members. Preview the new positions, then apply them.'
      : 'Only for a group without members. This broker\'s API has no dry run: apply commits at once.'),
    form, h('div', { class: 'actions' }, previewBtn, applyBtn), st, preview);
  el.setTopics = (topics) => {
    const current = topicSelect.value;
    const have = [...topicSelect.options].map((o) => o.value).join();
    if (have === topics.join()) return;
    clear(topicSelect, topics.map((t) => h('option', { value: t, selected: t === current }, t)));
  };
  return el;
}
