// Connections and channels: protocol, user, vhost, client, TLS, rates; close with a reason.

import { api, enc, get } from '../api.js';
import { LiveChart } from '../charts.js';
import { clear, confirmDialog, dl, fmtJson, fmtNum, h, section, status, table } from '../dom.js';
import { count, mountList, pagedList, text, VHOST } from '../tables.js';

const client = (c) => {
  const p = c.client_properties || {};
  return [p.product, p.version, p.connection_name].filter(Boolean).join(' ') || '—';
};
const tls = (c) => (c.tls === undefined ? '—' : c.tls ? (c.tls_version || 'yes') : 'no');

export async function render(root, params, ctx) {
  if (params.length >= 1 && params[0]) return detail(root, params[0], ctx);
  const list = mountList(root, ctx, {
    title: 'Connections',
    heading: 'All connections',
    path: '/connections',
    empty: 'No connections.',
    sorts: [['name', 'name'], ['user', 'user'], ['vhost', 'vhost'], ['protocol', 'protocol'], ['channels', 'channels']],
    columns: [
      { label: 'Name', value: (c) => h('a', { href: `#/connections/${encodeURIComponent(c.name)}` }, c.name) },
      text('Protocol', 'protocol'),
      text('User', 'user'),
      VHOST,
      { label: 'Client', value: client },
      { label: 'TLS', value: tls },
      count('Channels', 'channels'),
      text('State', 'state'),
    ],
  });
  if (ctx.caps.has('GET', '/channels')) {
    // Paged like the connections: 1,000 connections have at least as many channels.
    const channels = pagedList({
      caption: 'Channels',
      path: '/channels',
      caps: ctx.caps,
      empty: 'No channels.',
      sorts: [['name', 'name'], ['connection', 'connection'], ['user', 'user'], ['consumer_count', 'consumers'], ['messages_unacknowledged', 'unacked']],
      columns: CHANNEL_COLUMNS,
    });
    root.append(section('Channels', channels.el));
    return {
      async refresh() {
        await list.load();
        await channels.load();
      },
    };
  }
  return { refresh: list.load };
}

const stats = (c) => c.message_stats || {};
const CHANNEL_COLUMNS = [
  { label: 'Channel', value: (c) => c.name ?? `${c.connection} (${c.number})` },
  text('Protocol', 'protocol'),
  text('User', 'user'),
  VHOST,
  count('Consumers', 'consumer_count'),
  count('Unacked', 'messages_unacknowledged'),
  count('Prefetch', 'prefetch_count'),
  { label: 'Mode', value: (c) => (c.transactional ? 'transactional' : c.confirm ? 'confirm' : '') },
  { label: 'Published', num: true, value: (c) => fmtNum(stats(c).publish) },
  { label: 'Delivered', num: true, value: (c) => fmtNum(stats(c).deliver_get) },
];

function channelTable(rows) {
  return table('Channels', CHANNEL_COLUMNS, rows, 'No channels.');
}

async function detail(root, name, ctx) {
  const base = `/connections/${enc(name)}`;
  const rates = new LiveChart(`connection.${name}.rates`, 'Message rates', ['published', 'delivered'], { unit: 'messages/s' });
  const facts = h('div');
  const channels = h('div');
  root.append(
    h('p', {}, h('a', { href: '#/connections' }, '← All connections')),
    h('h1', {}, `Connection ${name}`),
    section('Connection', facts),
  );
  // Rates come from the channels' counters, where the broker's API has channels.
  const hasChannels = ctx.caps.has('GET', '/connections/{name}/channels');
  if (hasChannels) root.append(section('Rates', rates.el), section('Channels', channels));
  if (ctx.isAdmin) root.append(closeSection(base, name));
  return {
    async refresh() {
      const c = await get(base);
      clear(facts, dl([
        ['Protocol', c.protocol], ['User', c.user], ['Vhost', c.vhost], ['Peer', c.peer],
        ['Client', client(c)], ['TLS', tls(c)], ['State', c.state],
        ['Channels', fmtNum(c.channels)], ['Consumers', fmtNum(c.consumers)], ['Unacked', fmtNum(c.unacked)],
        ['Heartbeat', c.heartbeat_s === undefined ? '—' : `${c.heartbeat_s} s`],
        ['Client properties', fmtJson(c.client_properties)],
      ]));
      if (hasChannels) {
        const chs = await get(`${base}/channels`);
        const sum = (k) => chs.reduce((a, ch) => a + ((ch.message_stats || {})[k] || 0), 0);
        rates.push([sum('publish'), sum('deliver_get')]);
        clear(channels, channelTable(chs));
      }
    },
    destroy() { rates.destroy(); },
  };
}

function closeSection(base, name) {
  const st = status();
  const btn = h('button', { type: 'button', class: 'danger write' }, 'Close connection');
  btn.addEventListener('click', async () => {
    const reason = await confirmDialog(`Close connection ${name}?`, 'Close', { reasonLabel: 'Reason (the client is told)' });
    if (reason === false) return;
    try {
      await api('DELETE', base, undefined, { 'X-Reason': reason });
      location.hash = '#/connections';
    } catch (err) { st.fail(err); }
  });
  return section('Close', btn, st);
}
