// The Wharf web UI: log in, then one page at a time (hash routes), each refreshed by
// polling the public API every few seconds (the interval is chosen in the header and kept
// in localStorage).

import { api, get, setCsrf, Capabilities } from './api.js';
import { clear } from './dom.js';
import * as overview from './pages/overview.js';
import * as queues from './pages/queues.js';
import * as exchanges from './pages/exchanges.js';
import * as topics from './pages/topics.js';
import * as groups from './pages/groups.js';
import * as connections from './pages/connections.js';
import * as admin from './pages/admin.js';

const PAGES = { overview, queues, exchanges, topics, groups, connections, admin };
const TITLES = {
  overview: 'Overview', queues: 'Queues', exchanges: 'Exchanges', topics: 'Topics',
  groups: 'Consumer groups', connections: 'Connections', admin: 'Admin',
};
const LOGGED_IN_KEY = 'wharf.loggedIn'; // no secret: says whether to try GET /api/whoami
const INTERVAL_KEY = 'wharf.refreshSeconds';
const DEFAULT_INTERVAL_S = 5;

const $ = (id) => document.getElementById(id);
const state = { user: null, caps: null, page: null, timer: null };

function banner(text) {
  const el = $('banner');
  el.textContent = text || '';
  el.hidden = !text;
}

function showLogin(message) {
  state.user = null;
  localStorage.removeItem(LOGGED_IN_KEY);
  stopPage();
  document.querySelector('header.top').hidden = true;
  clear($('page'));
  $('login').hidden = false;
  $('login-status').textContent = message || '';
  document.title = 'Log in · Wharf';
  $('login-user').focus();
}

async function loggedIn(who) {
  state.user = who;
  setCsrf(who.csrf_token);
  localStorage.setItem(LOGGED_IN_KEY, '1');
  $('login').hidden = true;
  document.querySelector('header.top').hidden = false;
  $('whoami').textContent = `${who.name}${who.tags.length ? ' (' + who.tags.join(', ') + ')' : ''}`;
  try {
    state.caps = new Capabilities(await get('/openapi.json'));
  } catch {
    state.caps = new Capabilities(null);
  }
  route();
}

function ctx() {
  const tags = state.user.tags;
  const isAdmin = tags.includes('administrator');
  return {
    user: state.user,
    caps: state.caps,
    isAdmin,
    // Changes to queues, exchanges, topics, groups: permissions decide (the API's 403s are
    // shown as they are); monitoring-only users are read-only and see no write buttons.
    canWrite: isAdmin || tags.includes('management') || tags.includes('policymaker'),
    canPolicy: isAdmin || tags.includes('policymaker'),
    banner,
  };
}

function stopPage() {
  if (state.page && state.page.destroy) state.page.destroy();
  state.page = null;
}

async function route() {
  if (!state.user) return;
  const hash = location.hash.replace(/^#\/?/, '') || 'overview';
  const [name, ...rest] = hash.split('/');
  const module = PAGES[name] || overview;
  const key = PAGES[name] ? name : 'overview';
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === '#/' + key) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  stopPage();
  banner('');
  const root = clear($('page'));
  document.title = `${TITLES[key]} · Wharf`;
  const params = rest.map((p) => decodeURIComponent(p));
  try {
    state.page = await module.render(root, params, ctx());
  } catch (e) {
    banner(e.message);
    return;
  }
  await refresh();
}

async function refresh() {
  const page = state.page;
  // One refresh of a page at a time: a slow broker is not asked again meanwhile.  A tab
  // in the background asks nothing (it refreshes when shown again).
  if (!page || !page.refresh || page.busy || document.hidden) return;
  page.busy = true;
  try {
    await page.refresh();
    if (page === state.page) banner('');
  } catch (e) {
    if (page === state.page && state.user) banner(e.message);
  } finally {
    page.busy = false;
  }
}

function setTimer() {
  clearInterval(state.timer);
  const seconds = Number($('refresh').value);
  localStorage.setItem(INTERVAL_KEY, String(seconds));
  if (seconds > 0) state.timer = setInterval(refresh, seconds * 1000);
}

async function login(event) {
  event.preventDefault();
  const status = $('login-status');
  status.textContent = 'Logging in…';
  try {
    const who = await api('POST', '/auth/login', {
      username: $('login-user').value, password: $('login-password').value,
    });
    $('login-password').value = '';
    status.textContent = '';
    await loggedIn(who);
    $('main').focus();
  } catch (e) {
    status.textContent = e.message;
  }
}

async function logout() {
  try {
    await api('POST', '/auth/logout');
  } catch {
    // the session may have ended already: the login form is what follows either way
  }
  setCsrf(null);
  showLogin('Logged out.');
}

async function start() {
  const saved = localStorage.getItem(INTERVAL_KEY);
  $('refresh').value = saved !== null ? saved : String(DEFAULT_INTERVAL_S);
  $('refresh').addEventListener('change', setTimer);
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
  document.addEventListener('wharf:logged-out', (e) => { if (state.user) showLogin(e.detail); });
  setTimer();
  if (!localStorage.getItem(LOGGED_IN_KEY)) { showLogin(); return; }
  try {
    await loggedIn(await get('/whoami'));
  } catch (e) {
    showLogin(e.status === 401 ? '' : e.message);
  }
}

start();

