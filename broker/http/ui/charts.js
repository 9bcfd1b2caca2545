// Live charts on uPlot (vendored: ui/vendor/, docs/decisions.md).  A rate chart turns
// counter samples into per-second rates from their deltas; a gauge chart plots values as
// they are.  Each keeps its last WINDOW_S seconds, in a series kept across page changes
// (keyed by what it shows), so going back to a page shows its history.

export const WINDOW_S = 600;
const EDGE_S = 5; // room after the last point, so it is not drawn on the edge
const PALETTE = ['#1f5fbf', '#b3261e', '#2e7d32', '#8a4b00', '#6a1b9a', '#00695c', '#ad1457'];
const histories = new Map();

class History {
  constructor(names) {
    this.names = names;
    this.times = [];
    this.values = names.map(() => []);
    this.last = null; // the previous counter sample, for rates
  }

  trim(now) {
    let drop = 0;
    while (drop < this.times.length && this.times[drop] < now - WINDOW_S) drop++;
    if (drop) {
      this.times.splice(0, drop);
      for (const v of this.values) v.splice(0, drop);
    }
  }
}

export class LiveChart {
  // mode: 'rate' (values are counters) or 'gauge'
  constructor(key, title, names, { mode = 'rate', unit = mode === 'rate' ? '/s' : '' } = {}) {
    this.mode = mode;
    this.title = title;
    let hist = histories.get(key);
    if (!hist || hist.names.join() !== names.join()) {
      hist = new History(names);
      histories.set(key, hist);
    }
    this.hist = hist;
    this.el = document.createElement('figure');
    this.el.className = 'chart';
    const caption = document.createElement('figcaption');
    caption.textContent = `${title} (last 10 minutes${unit ? ', ' + unit : ''})`;
    this.plotEl = document.createElement('div');
    this.plotEl.setAttribute('role', 'img');
    this.plotEl.setAttribute('aria-label', `${title}: chart of ${names.join(', ')}`);
    this.el.append(caption, this.plotEl);
    this.plot = null;
  }

  // values: one number (or undefined) per series; t: seconds since the epoch
  push(values, t = Date.now() / 1000) {
    const h = this.hist;
    let point = values;
    if (this.mode === 'rate') {
      const prev = h.last;
      h.last = { t, values };
      if (!prev || t <= prev.t) { this.draw(); return; }
      const dt = t - prev.t;
      point = values.map((v, i) => (v === undefined || prev.values[i] === undefined
        ? null : Math.max(0, (v - prev.values[i]) / dt)));
    }
    h.times.push(t);
    point.forEach((v, i) => h.values[i].push(v ?? null));
    h.trim(t);
    this.draw();
  }

  draw() {
    if (typeof uPlot === 'undefined' || !this.el.isConnected) return;
    const width = Math.max(260, Math.min(this.el.clientWidth || 600, 1100) - 8);
    const data = [this.hist.times, ...this.hist.values];
    if (!this.plot) {
      this.plot = new uPlot({
        width, height: 180,
        scales: {
          // Always the whole window, so one sample does not stretch over years.
          x: { time: true, range: () => { const t = this.hist.times; const end = t.length ? t[t.length - 1] : Date.now() / 1000; return [end - WINDOW_S, end + EDGE_S]; } },
          y: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.1)] },
        },
        axes: [{}, { size: 60 }],
        legend: { live: false },
        series: [{}, ...this.hist.names.map((name, i) => ({
          label: name, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true,
        }))],
      }, data, this.plotEl);
    } else {
      if (Math.abs(this.plot.width - width) > 20) this.plot.setSize({ width, height: 180 });
      this.plot.setData(data);
    }
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
