// Tables of the UI's pages, in one module so that every list looks and behaves alike:
// the columns they show, a link to a resource's page, the paged list (filter, sort,
// pages) and a list page's heading and section.

import { listPage } from './api.js';
import { clear, field, fmtNum, formValues, h, section, table } from './dom.js';

export const link = (kind, vhost, name, text) =>
  h('a', { href: `#/${kind}/${encodeURIComponent(vhost)}/${encodeURIComponent(name)}` }, text ?? name);

// Columns ({ label, value, num }) of the common kinds, by the row's field.
export const text = (label, key) => ({ label, value: (row) => row[key] });
export const count = (label, key) => ({ label, num: true, value: (row) => fmtNum(row[key]) });
export const yesNo = (label, key) => ({ label, value: (row) => (row[key] ? 'yes' : 'no') });
export const VHOST = text('Vhost', 'vhost');
// The row's name (``key``), linked to its page under #/kind/vhost/name.
export const nameLink = (kind, label = 'Name', key = 'name') =>
  ({ label, value: (row) => link(kind, row.vhost, row[key]) });

// A list with a server-side filter, sort and pages (or client-side until the broker's API
// pages), refreshed by the page's poll.
export function pagedList({ caption, path, routePath = path, columns, sorts, caps, empty }) {
  const opts = { page: 1, pageSize: 50, name: '', regex: false, sort: sorts[0][0], reverse: false };
  const out = h('div', { class: 'list-body' });
  const info = h('p', { class: 'muted', role: 'status' });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': `Filter ${caption}` },
    field('Name contains', 'name'),
    field('Regular expression', 'regex', { kind: 'checkbox' }),
    field('Sort by', 'sort', { kind: 'select', options: sorts, value: opts.sort }),
    field('Descending', 'reverse', { kind: 'checkbox' }),
    field('Per page', 'pageSize', { kind: 'select', options: ['20', '50', '100', '500'], value: '50' }),
    h('button', { type: 'submit' }, 'Apply'));
  const prev = h('button', { type: 'button', class: 'secondary' }, 'Previous page');
  const next = h('button', { type: 'button', class: 'secondary' }, 'Next page');
  const pager = h('div', { class: 'pager' }, prev, info, next);
  let last = null;
  const load = async () => {
    const res = await listPage(caps, path, routePath, opts);
    last = res;
    opts.page = res.page;
    clear(out, table(caption, columns, res.items, empty));
    info.textContent = `Page ${res.page} of ${res.page_count}: ${res.item_count} shown, ` +
      `${res.filtered_count} matching, ${res.total_count} in all` +
      (res.server ? '' : ' (filtered here: this broker\'s API does not page)');
    prev.disabled = res.page <= 1;
    next.disabled = res.page >= res.page_count;
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const v = formValues(form);
    Object.assign(opts, { name: v.name, regex: v.regex, sort: v.sort, reverse: v.reverse, pageSize: Number(v.pageSize), page: 1 });
    load().catch((err) => { info.textContent = err.message; });
  });
  prev.addEventListener('click', () => { opts.page -= 1; load().catch((err) => { info.textContent = err.message; }); });
  next.addEventListener('click', () => { opts.page += 1; load().catch((err) => { info.textContent = err.message; }); });
  return { el: h('div', { class: 'paged' }, form, out, pager), load, get last() { return last; } };
}

// A list page: its heading, and the paged list of ``path`` (caption: the heading) in a
// section; returns the list (``el``, ``load``) for the page's poll and forms.
export function mountList(root, ctx, { title, heading, path, ...options }) {
  const list = pagedList({ caption: title, path, caps: ctx.caps, ...options });
  root.append(h('h1', {}, title), section(heading, list.el));
  return list;
}
