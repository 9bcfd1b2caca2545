// Pieces the pages share: parsing what a form's JSON and key=value fields hold (the
// tables are tables.js).

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
