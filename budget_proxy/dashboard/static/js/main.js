// The page: sign-in, tabs (one module each, in ./tabs), the live connection.

import {api, token} from './api.js';
import {h, setCanAct} from './dom.js';
import {setZone} from './format.js';
import {Live} from './live.js';
import dashboard from './tabs/dashboard.js';
import usage from './tabs/usage.js';
import policies from './tabs/policies.js';
import allocations from './tabs/allocations.js';
import alerts from './tabs/alerts.js';
import prices from './tabs/prices.js';
import keys from './tabs/keys.js';
import chat from './tabs/chat.js';

const TABS = [dashboard, usage, policies, allocations, alerts, prices, keys, chat];
const $ = (id) => document.getElementById(id);
let live = null;
let active = null;

const ctx = {
  session: null,
  isActive: (id) => active === id,
  /** Switch to another tab (e.g. from an empty state's link). */
  open: (id) => { window.location.hash = id; },
};

function showLogin(message = '', cancellable = false) {
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('login-cancel').hidden = !cancellable;
  $('login-token').value = '';
  $('login-token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const previous = token.get();
  const upgrading = !$('login-cancel').hidden;  // a viewer asking for the admin role
  token.set($('login-token').value.trim());
  const session = await api('/ui/api/session');
  if (session.role === 'none' || (upgrading && session.role !== 'admin')) {
    if (previous) token.set(previous); else token.clear();
    $('login-error').textContent = 'This token is not accepted here.';
    return;
  }
  $('login').hidden = true;
  start(session);
}

function showTab(id) {
  const tab = TABS.find((t) => t.id === id) || TABS[0];
  active = tab.id;
  for (const t of TABS) {
    $(`tab-${t.id}`).hidden = t.id !== tab.id;
    document.querySelector(`#tabs [data-tab="${t.id}"]`).setAttribute('aria-selected', String(t.id === tab.id));
  }
  tab.show();
}

function start(session) {
  ctx.session = session;
  setZone(session.timezone);
  setCanAct(session.role === 'admin');
  document.body.dataset.role = session.role;
  $('zone').textContent = `times in ${session.timezone}`;
  $('role').hidden = false;
  $('role').textContent = session.role;
  $('role').className = `badge ${session.role}`;
  $('sign-in').hidden = !(session.login && session.role !== 'admin');
  $('sign-out').hidden = !token.get();

  const nav = $('tabs');
  const main = $('app');
  nav.replaceChildren();
  main.replaceChildren();
  for (const tab of TABS) {
    nav.append(h('button', {type: 'button', role: 'tab', dataset: {tab: tab.id},
      onclick: () => { window.location.hash = tab.id; }}, tab.title));
    const section = h('section', {id: `tab-${tab.id}`, role: 'tabpanel', hidden: true});
    main.append(section);
    tab.init(section, ctx);
  }
  nav.hidden = false;
  main.hidden = false;
  showTab(window.location.hash.slice(1));

  if (live) live.stop();
  live = new Live(token.get(), (event) => {
    for (const tab of TABS) tab.onEvent(event);
  }, (state, reconnected) => {
    $('live').dataset.state = state;
    $('live').textContent = state;
    if (state === 'live') $('live').dataset.connections = String(Number($('live').dataset.connections || 0) + 1);
    if (reconnected) TABS.find((t) => t.id === active).show();  // catch up on missed events
  });
  live.start();
}

async function boot() {
  $('login-form').addEventListener('submit', (e) => { signIn(e); });
  $('login-cancel').addEventListener('click', () => { $('login').hidden = true; });
  $('sign-in').addEventListener('click', () => showLogin('', true));
  $('sign-out').addEventListener('click', () => {
    token.clear();
    if (live) live.stop();
    window.location.reload();
  });
  window.addEventListener('hashchange', () => { if (ctx.session) showTab(window.location.hash.slice(1)); });
  const session = await api('/ui/api/session');
  if (session.role === 'none') {
    token.clear();
    showLogin();
    return;
  }
  start(session);
}

boot();
