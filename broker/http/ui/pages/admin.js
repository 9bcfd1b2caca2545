// Admin: vhosts, users, permissions, topic permissions, policies, limits.  Administrators
// change them; other users see what the API lets them read, read-only.

import { api, enc, get } from '../api.js';
import { clear, confirmDialog, field, fmtJson, fmtNum, formValues, h, section, status, table } from '../dom.js';
import { jsonOrEmpty } from './common.js';

export async function render(root, params, ctx) {
  root.append(h('h1', {}, 'Admin'));
  if (!ctx.isAdmin) {
    root.append(h('p', { class: 'muted' }, 'Read-only: changes here need the administrator tag.'));
  }
  const parts = [
    part(ctx, 'Virtual hosts', '/vhosts', [
      { label: 'Name', value: (v) => v.name },
      { label: 'Description', value: (v) => v.description },
      { label: 'Queues', num: true, value: (v) => fmtNum(v.queues) },
      { label: 'Topics', num: true, value: (v) => fmtNum(v.topics) },
      { label: 'Connections', num: true, value: (v) => fmtNum(v.connections) },
      { label: 'Ready', num: true, value: (v) => fmtNum(v.messages_ready) },
    ], {
      del: (v) => [`/vhosts/${enc(v.name)}`, `Delete vhost ${v.name} with everything in it?`],
      form: () => [field('Name', 'name', { required: true }), field('Description', 'description')],
      submit: (v) => ['PUT', `/vhosts/${enc(v.name)}`, { description: v.description }],
      add: 'Add vhost',
    }),
    part(ctx, 'Users', '/users', [
      { label: 'Name', value: (u) => u.name },
      { label: 'Tags', value: (u) => (u.tags || []).join(', ') },
      { label: 'Source', value: (u) => u.source },
    ], {
      del: (u) => [`/users/${enc(u.name)}`, `Delete user ${u.name} and close its connections?`],
      form: () => [field('Name', 'name', { required: true }), field('Password', 'password', { kind: 'password', required: true }),
        field('Tags (comma separated)', 'tags', { hint: 'administrator, monitoring, management, policymaker' })],
      submit: (v) => ['PUT', `/users/${enc(v.name)}`, { password: v.password, tags: v.tags }],
      add: 'Add or change user',
    }),
    part(ctx, 'Permissions', '/permissions', [
      { label: 'User', value: (p) => p.user }, { label: 'Vhost', value: (p) => p.vhost },
      { label: 'Configure', value: (p) => p.configure }, { label: 'Write', value: (p) => p.write },
      { label: 'Read', value: (p) => p.read },
    ], {
      del: (p) => [`/permissions/${enc(p.vhost)}/${enc(p.user)}`, `Remove ${p.user}'s access to vhost ${p.vhost}?`],
      form: () => [field('User', 'user', { required: true }), field('Vhost', 'vhost', { value: '/' }),
        field('Configure (regex)', 'configure', { value: '.*' }), field('Write (regex)', 'write', { value: '.*' }),
        field('Read (regex)', 'read', { value: '.*' })],
      submit: (v) => ['PUT', `/permissions/${enc(v.vhost)}/${enc(v.user)}`, { configure: v.configure, write: v.write, read: v.read }],
      add: 'Set permissions',
    }),
    part(ctx, 'Topic permissions', '/topic-permissions', [
      { label: 'User', value: (p) => p.user }, { label: 'Vhost', value: (p) => p.vhost },
      { label: 'Exchange', value: (p) => p.exchange }, { label: 'Write', value: (p) => p.write },
      { label: 'Read', value: (p) => p.read },
    ], {
      del: (p) => [`/topic-permissions/${enc(p.vhost)}/${enc(p.user)}?exchange=${enc(p.exchange)}`, `Remove ${p.user}'s topic permission on ${p.exchange}?`],
      form: () => [field('User', 'user', { required: true }), field('Vhost', 'vhost', { value: '/' }),
        field('Exchange', 'exchange', { required: true }), field('Write (regex)', 'write', { value: '.*' }),
        field('Read (regex)', 'read', { value: '.*' })],
      submit: (v) => ['PUT', `/topic-permissions/${enc(v.vhost)}/${enc(v.user)}`, { exchange: v.exchange, write: v.write, read: v.read }],
      add: 'Set topic permission',
    }),
    part(ctx, 'Policies', '/policies', [
      { label: 'Vhost', value: (p) => p.vhost }, { label: 'Name', value: (p) => p.name },
      { label: 'Pattern', value: (p) => p.pattern }, { label: 'Applies to', value: (p) => p['apply-to'] },
      { label: 'Priority', num: true, value: (p) => String(p.priority) },
      { label: 'Definition', value: (p) => fmtJson(p.definition) },
    ], {
      writable: ctx.canPolicy,
      del: (p) => [`/policies/${enc(p.vhost)}/${enc(p.name)}`, `Delete policy ${p.name}?`],
      form: () => [field('Vhost', 'vhost', { value: '/' }), field('Name', 'name', { required: true }),
        field('Pattern (regex)', 'pattern', { required: true }),
        field('Definition (JSON)', 'definition', { kind: 'textarea', value: '{"max-length": 1000}' }),
        field('Priority', 'priority', { kind: 'number', value: '0' })],
      submit: (v) => ['PUT', `/policies/${enc(v.vhost)}/${enc(v.name)}`,
        { pattern: v.pattern, definition: jsonOrEmpty(v.definition, 'definition'), priority: Number(v.priority) || 0 }],
      add: 'Set policy',
    }),
    part(ctx, 'Vhost limits', '/vhost-limits', [
      { label: 'Vhost', value: (l) => l.vhost }, { label: 'Limits', value: (l) => fmtJson(l.value) },
    ], {
      form: () => [field('Vhost', 'vhost', { value: '/' }),
        field('Limit', 'limit', { kind: 'select', options: ['max-connections', 'max-queues', 'max-topics'] }),
        field('Value (negative: remove)', 'value', { kind: 'number', value: '100' })],
      submit: (v) => ['PUT', `/vhost-limits/${enc(v.vhost)}/${enc(v.limit)}`, { value: Number(v.value) }],
      add: 'Set vhost limit',
    }),
    part(ctx, 'User limits', '/user-limits', [
      { label: 'User', value: (l) => l.user }, { label: 'Limits', value: (l) => fmtJson(l.value) },
    ], {
      form: () => [field('User', 'user', { required: true }),
        field('Limit', 'name', { kind: 'select', options: ['max-connections', 'max-channels', 'max-publish-bytes-per-second', 'max-consume-bytes-per-second'] }),
        field('Value (-1: no limit)', 'value', { kind: 'number', value: '10' })],
      submit: (v) => ['PUT', `/user-limits/${enc(v.user)}/${enc(v.name)}`, { value: Number(v.value) }],
      add: 'Set user limit',
    }),
  ];
  root.append(...parts.map((p) => p.el));
  return {
    async refresh() {
      for (const p of parts) await p.load();
    },
  };
}

function part(ctx, title, path, columns, { del, form, submit, add, writable = ctx.isAdmin }) {
  const body = h('div');
  const el = section(title, body);
  if (ctx.caps.adminOnly('GET', path) && !ctx.isAdmin) {
    body.append(h('p', { class: 'muted' }, `Only users with the administrator tag may read ${title.toLowerCase()}.`));
    return { el, load: async () => {} };
  }
  const st = status();
  const cols = writable && del ? [...columns, {
    label: 'Actions',
    value: (row) => {
      const [target, question] = del(row);
      const b = h('button', { type: 'button', class: 'danger small write', 'aria-label': `Delete: ${question}` }, 'Delete');
      b.addEventListener('click', async () => {
        if (!(await confirmDialog(question, 'Delete'))) return;
        try {
          await api('DELETE', target);
          st.ok('Deleted.');
          await load();
        } catch (err) { st.fail(err); }
      });
      return b;
    },
  }] : columns;
  const list = h('div');
  body.append(list, st);
  const load = async () => clear(list, table(title, cols, await get(path)));
  if (writable && form) {
    const f = h('form', { class: 'admin-form' }, form(), h('button', { type: 'submit', class: 'write' }, add));
    f.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const [method, target, payload] = submit(formValues(f));
        await api(method, target, payload);
        st.ok('Saved.');
        await load();
      } catch (err) { st.fail(err); }
    });
    body.append(h('details', {}, h('summary', {}, add), f));
  }
  return { el, load };
}
