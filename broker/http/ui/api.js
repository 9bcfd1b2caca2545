// The UI's only way to the broker: the public /api endpoints, as `wharf ctl` uses them.
// Reads send the session cookie; changes also send the session's CSRF token.

let csrfToken = null;
export function setCsrf(token) { csrfToken = token; }

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const enc = encodeURIComponent;

export async function api(method, path, body, extraHeaders = {}) {
  const headers = { 'X-Requested-With': 'wharf-ui', Accept: 'application/json', ...extraHeaders };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let response;
  try {
    response = await fetch('/api' + path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 0, `the broker cannot be reached (${e.message})`);
  }
  const text = await response.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch { doc = { error: text }; }
  if (!response.ok) {
    const message = (doc && doc.error) || `HTTP ${response.status}`;
    const code = doc && doc.code;
    if (response.status === 401 && path !== '/auth/login') {
      document.dispatchEvent(new CustomEvent('wharf:logged-out', { detail: message }));
    }
    throw new ApiError(response.status, code,
      code !== undefined ? `${message} (HTTP ${response.status}, code ${code})` : message);
  }
  return doc;
}

export const get = (path) => api('GET', path);

// What the running broker's API offers, from its OpenAPI document: pages use newer
// endpoints (paging, channels, records, dry runs) only where the broker has them.
export class Capabilities {
  constructor(doc) { this.doc = doc || { paths: {}, components: { schemas: {} } }; }

  has(method, path) {
    const ops = this.doc.paths['/api' + path];
    return !!(ops && ops[method.toLowerCase()]);
  }

  // Whether the API says this operation needs the administrator tag (its summary).
  adminOnly(method, path) {
    const op = (this.doc.paths['/api' + path] || {})[method.toLowerCase()];
    return !!(op && /administrator tag/.test(op.summary || ''));
  }

  query(path, name) {
    const op = (this.doc.paths['/api' + path] || {}).get;
    return !!(op && (op.parameters || []).some((p) => p.in === 'query' && p.name === name));
  }

  schemaField(schema, name) {
    const s = (this.doc.components.schemas || {})[schema];
    return !!(s && s.properties && name in s.properties);
  }
}

// A list endpoint, paged and filtered by the server when it can (RabbitMQ's
// ?page=&page_size=&name=&use_regex=&sort=&sort_reverse= shape), else fetched whole
// and paged here.
export async function listPage(caps, path, routePath, { page = 1, pageSize = 50, name = '', regex = false, sort = 'name', reverse = false }) {
  if (caps.query(routePath, 'page')) {
    const q = new URLSearchParams({ page, page_size: pageSize, sort, sort_reverse: reverse });
    if (name) { q.set('name', name); q.set('use_regex', regex); }
    const doc = await get(`${path}?${q}`);
    return { ...doc, server: true };
  }
  const all = await get(path);
  let items = all;
  if (name) {
    let test;
    if (regex) {
      let re;
      try { re = new RegExp(name); } catch (e) { throw new ApiError(400, 400, `bad regular expression: ${e.message}`); }
      test = (s) => re.test(s);
    } else {
      const needle = name.toLowerCase();
      test = (s) => s.toLowerCase().includes(needle);
    }
    items = items.filter((i) => test(String(i.name ?? i.group ?? '')));
  }
  items = [...items].sort((a, b) => {
    const x = a[sort], y = b[sort];
    const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x ?? '').localeCompare(String(y ?? ''));
    return reverse ? -c : c;
  });
  const pageCount = Math.max(1, Math.ceil(items.length / pageSize));
  const p = Math.min(page, pageCount);
  return {
    items: items.slice((p - 1) * pageSize, p * pageSize),
    page: p, page_size: pageSize, page_count: pageCount,
    item_count: Math.min(pageSize, items.length - (p - 1) * pageSize),
    filtered_count: items.length, total_count: all.length, server: false,
  };
}
