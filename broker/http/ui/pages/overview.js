// Overview: message rates, queue totals, produce/fetch rates, connections, alarms, node.

import { get } from '../api.js';
import { LiveChart } from '../charts.js';
import { clear, dl, fmtBytes, fmtDuration, fmtNum, h, section } from '../dom.js';

const MESSAGE_RATES = ['published', 'delivered', 'acked', 'redelivered', 'dead_lettered'];

export async function render(root, params, ctx) {
  const messages = new LiveChart('overview.messages', 'Message rates', MESSAGE_RATES);
  const logs = new LiveChart('overview.logs', 'Log records produced and fetched', ['produced', 'fetched']);
  const depth = new LiveChart('overview.depth', 'Queued messages', ['ready', 'unacked', 'delayed'], { mode: 'gauge', unit: 'messages' });
  const fsyncs = new LiveChart('overview.fsyncs', 'fsyncs', ['fsyncs']);
  const totals = h('div');
  const node = h('div');
  const alarms = h('div');
  root.append(
    h('h1', {}, 'Overview'),
    h('div', { class: 'grid' },
      section('Totals', totals),
      section('Alarms', alarms),
      section('Node', node)),
    section('Messages', messages.el, depth.el),
    section('Logs and disk', logs.el, fsyncs.el),
  );
  const charts = [messages, logs, depth, fsyncs];
  return {
    async refresh() {
      const o = await get('/overview');
      const t = Date.now() / 1000;
      const stats = o.message_stats || {};
      const n = o.node || {};
      const q = o.queue_totals || {};
      messages.push(MESSAGE_RATES.map((k) => stats[k]), t);
      const lg = o.log_stats || {};  // records appended to and fetched from log topics
      logs.push([lg.records_produced, lg.records_fetched], t);
      depth.push([q.messages_ready, q.messages_unacked, q.messages_delayed], t);
      fsyncs.push([n.fsyncs_total], t);
      const ot = o.object_totals || {};
      clear(totals, dl([
        ['Version', o.version],
        ['Ready', o.ready ? 'yes' : 'no (starting or stopping)'],
        ['Connections', fmtNum(ot.connections)],
        ['Queues', fmtNum(ot.queues)],
        ['Exchanges', fmtNum(ot.exchanges)],
        ['Topics', fmtNum(ot.topics)],
        ['Consumers', fmtNum(ot.consumers)],
        ['Virtual hosts', fmtNum(ot.vhosts)],
        ['Messages ready', fmtNum(q.messages_ready)],
        ['Messages unacked', fmtNum(q.messages_unacked)],
        ['Messages delayed', fmtNum(q.messages_delayed)],
      ]));
      clear(alarms, (o.alarms || []).length
        ? h('ul', { class: 'alarms' }, o.alarms.map((a) => h('li', { class: 'alarm' }, a)))
        : h('p', { class: 'ok' }, 'No resource alarm.'));
      const mem = o.memory || {};
      clear(node, dl([
        ['Uptime', fmtDuration(n.uptime_s)],
        ['Memory (RSS)', fmtBytes(mem.rss_bytes)],
        ['Memory high watermark', fmtBytes(mem.high_watermark_bytes)],
        ['Disk free', fmtBytes(n.disk_free_bytes)],
        ['Disk free limit', fmtBytes(n.disk_free_limit_bytes)],
        ['fsyncs', fmtNum(n.fsyncs_total)],
        ['File descriptors', n.fd_limit ? `${fmtNum(n.fd_used)} of ${fmtNum(n.fd_limit)}` : fmtNum(n.fd_used)],
        ['Listeners', (o.listeners || []).map((l) => `${l.protocol} ${l.port}`).join(', ')],
      ]));
    },
    destroy() { charts.forEach((c) => c.destroy()); },
  };
}
