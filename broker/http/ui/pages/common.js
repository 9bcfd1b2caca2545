// Pieces the list pages share: the filter/sort/page bar and the paged table.

import { listPage } from '../api.js';
import { clear, field, formValues, h, table } from '../dom.js';

export const link = (kind, vhost, name, text) =>
  h('a', { href: `#/${kind}/${encodeURIComponent(vhost)}/${encodeURIComponent(name)}` }, text ?? name);

// A list with a server-side filter, sort and pages (or client-side until the broker's API
// pages), refreshed by the page's poll.
export function pagedList({ caption, path, routePath, columns, sorts, caps, empty }) {
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

export function jsonOrEmpty(text, what) {
  if (!text.trim()) return {};
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || Array.isArray(v) || v === null) throw new Error('not an object');
    return v;
  } catch (e) {
    throw new Error(`${what} must be a JSON object (${e.message})`);
  }
}

// key=value lines (values parsed as JSON when they parse, as `wharf ctl --config`).
export function keyValues(text) {
  const out = {};
  for (const line of text.split(/[\n,]/)) {
    const s = line.trim();
    if (!s) continue;
    const [k, ...rest] = s.split('=');
    const raw = rest.join('=');
    let v = raw;
    try { v = JSON.parse(raw); } catch { v = raw; }
    out[k.trim().replaceAll('.', '_')] = v;
  }
  return out;
}
