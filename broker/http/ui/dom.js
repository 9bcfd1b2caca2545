// DOM helpers: elements are built with createElement and textContent only (never
// innerHTML), so names and message bodies from the broker cannot inject markup.

let idCounter = 0;
export const uid = (prefix) => `${prefix}-${++idCounter}`;

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// Replace el's content.  Pages re-render on every poll: a focused link or button inside
// is found again in the new content (same tag, text and label) and keeps the focus, so
// keyboard users are not thrown back to the top.
export function clear(el, ...children) {
  const active = document.activeElement;
  const had = active && active !== el && el.contains(active)
    ? { tag: active.tagName, text: active.textContent, label: active.getAttribute('aria-label') }
    : null;
  el.replaceChildren();
  append(el, children);
  if (had) {
    const same = [...el.querySelectorAll(had.tag)].find((n) =>
      n.textContent === had.text && n.getAttribute('aria-label') === had.label);
    if (same) same.focus();
  }
  return el;
}

export function fmtNum(n) {
  if (n === undefined || n === null) return '—';
  if (typeof n !== 'number') return String(n);
  return Number.isInteger(n) ? n.toLocaleString('en-US') : n.toFixed(1);
}

export function fmtBytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function fmtDuration(s) {
  if (s === undefined || s === null) return '—';
  s = Math.floor(s);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60), ss = s % 60;
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${mm}m` : mm ? `${mm}m ${ss}s` : `${ss}s`;
}

export function fmtJson(v) {
  return v === undefined ? '—' : JSON.stringify(v);
}

// A table in a focusable scrolling region (keyboard users can scroll it).
// columns: [{label, value: row => text|Node, num?: true}]
export function table(caption, columns, rows, empty = 'None.') {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  const t = h('table', {},
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : '' }, c.label)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, columns.map((c) => {
      const v = c.value(r);
      return h('td', { class: c.num ? 'num' : '' }, v === undefined || v === null ? '—' : v);
    })))));
  return h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption }, t);
}

export function section(title, ...children) {
  return h('section', { class: 'card', 'aria-label': title }, h('h2', {}, title), ...children);
}

export function dl(pairs) {
  return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}

// A labelled form control. kind: 'text' | 'number' | 'select' | 'textarea' | 'checkbox'
export function field(label, name, { kind = 'text', value = '', options = [], required = false, hint } = {}) {
  const id = uid(name);
  let input;
  if (kind === 'select') {
    input = h('select', { id, name }, options.map((o) => {
      const [v, text] = Array.isArray(o) ? o : [o, o];
      return h('option', { value: v, selected: v === value }, text);
    }));
  } else if (kind === 'textarea') {
    input = h('textarea', { id, name, rows: 3, required }, value);
  } else if (kind === 'checkbox') {
    input = h('input', { id, name, type: 'checkbox', checked: !!value });
    return h('div', { class: 'field check' }, input, h('label', { for: id }, label));
  } else {
    input = h('input', { id, name, type: kind, value, required, autocomplete: 'off' });
  }
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    hint ? h('small', {}, hint) : null);
}

export function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    out[el.name] = el.type === 'checkbox' ? el.checked : el.value;
  }
  return out;
}

// A modal confirmation (<dialog>: focus is trapped and Escape cancels).  With
// reasonLabel, also asks for a text (a connection's close reason).
export function confirmDialog(message, actionLabel, { reasonLabel } = {}) {
  return new Promise((resolve) => {
    const reasonId = uid('reason');
    const reason = reasonLabel ? h('input', { id: reasonId, type: 'text', value: 'closed from the web UI' }) : null;
    const dlg = h('dialog', { class: 'confirm', 'aria-labelledby': reasonId + '-t' },
      h('form', { method: 'dialog' },
        h('p', { id: reasonId + '-t' }, message),
        reason ? h('div', { class: 'field' }, h('label', { for: reasonId }, reasonLabel), reason) : null,
        h('div', { class: 'actions' },
          h('button', { value: 'cancel', type: 'submit', class: 'secondary' }, 'Cancel'),
          h('button', { value: 'ok', type: 'submit', class: 'danger' }, actionLabel))));
    dlg.addEventListener('close', () => {
      const ok = dlg.returnValue === 'ok';
      dlg.remove();
      resolve(ok ? (reason ? reason.value : true) : false);
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

// A status line for a form: errors shown as the API wrote them.
export function status() {
  const el = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  el.ok = (text) => { el.className = 'status ok'; el.textContent = text; };
  el.fail = (err) => { el.className = 'status error'; el.textContent = err.message || String(err); };
  return el;
}

// A form that writes: ``fields``, a submit button labelled ``button`` and a status line.
// On submit ``write(values)`` runs (it calls the API) and returns what the status line
// says; then ``after()`` (a list's reload), if given.  An error of either is shown instead.
export function writeForm(fields, button, write, after) {
  const st = status();
  const form = h('form', {}, ...fields, h('button', { type: 'submit', class: 'write' }, button), st);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      st.ok(await write(formValues(form)));
      if (after) await after();
    } catch (err) { st.fail(err); }
  });
  return form;
}

export function hexDump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const chunk = bytes.slice(i, i + 16);
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const text = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${i.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${text}`);
  }
  return lines.join('\n');
}
