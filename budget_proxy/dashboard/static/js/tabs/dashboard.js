// Dashboard: spend today and this month, the month-end projection, every budget's window
// (spent / reserved / limit, time to reset, runway), refusals, the proxy's own overhead,
// store health, and the latest calls as they happen.

import {api} from '../api.js';
import {action, attempt, badge, debounce, field, h, select, table} from '../dom.js';
import {amount, count, duration, limits, money, ms, pct, time, tokens} from '../format.js';

const LATEST_CALLS = 10;
const TICK_MS = 15000;  // times to reset and runways move without events: refresh this often
let root = null;
let ctx = null;
let latest = [];

function card(label, value, note, {name, bad} = {}) {
  return h('div', {class: bad ? 'card bad' : 'card', dataset: {card: name}},
    h('div', {class: 'label'}, label), h('div', {class: 'value'}, value),
    note ? h('div', {class: 'note'}, note) : null);
}

function cards(s, openAlerts) {
  const spend = s.spend || {};
  const store = s.store_status === 'ok'
    ? `${s.store} ok` : `${s.store} unavailable`;
  const overhead = s.overhead_ms;
  return h('div', {class: 'cards'},
    card('Spend today', money(spend.today), `${count(spend.requests_month)} calls this month`, {name: 'today'}),
    card('Spend this month', money(spend.month), `resets ${time(spend.month_resets_at)}`, {name: 'month'}),
    card('Month-end projection', money(spend.month_projection), 'at this month\'s average burn', {name: 'projection'}),
    card('Refusals, last hour', count(s.refusals_last_hour.total), 'requests a hard limit refused',
      {name: 'refusals', bad: s.refusals_last_hour.total > 0}),
    card('Proxy overhead', `${ms(overhead.p50)} p50`, `${ms(overhead.p99)} p99 over ${count(overhead.calls)} calls`, {name: 'overhead'}),
    card('Store', store, s.store_status === 'ok' ? `fail mode ${s.fail_mode}` : `fail ${s.fail_state}`,
      {name: 'store', bad: s.store_status !== 'ok'}),
    card('Open alerts', count(openAlerts), openAlerts ? 'see the Alerts tab' : 'none to acknowledge',
      {name: 'alerts', bad: openAlerts > 0}),
  );
}

function figure(label, value, text) {
  return h('span', {}, `${label} `, h('b', {dataset: {field: label, value: value === null ? '' : String(value)}}, text));
}

function budgetRow(p) {
  const limit = p.limit || 0;
  const share = (v) => `${limit ? Math.min(100, (v / limit) * 100) : 0}%`;
  const spent = h('span', {class: 'spent'});
  const reserved = h('span', {class: 'reserved'});
  spent.style.width = share(p.spent);
  reserved.style.width = share(p.reserved);
  const bar = h('div', {class: p.utilisation >= 1 ? 'bar over' : 'bar', title: pct(p.utilisation)}, spent, reserved);
  if (p.type !== 'ignore' && limit) {
    const mark = h('span', {class: 'threshold', title: `warning at ${pct(p.warning_threshold)}`});
    mark.style.left = `${p.warning_threshold * 100}%`;
    bar.append(mark);
  }
  let runway = h('span', {}, p.burn_per_hour ? 'lasts past the reset at this burn' : 'no spend yet this window');
  if (p.runway_s === 0) runway = h('span', {class: 'error'}, 'limit reached');
  else if (p.runs_out_at) runway = h('span', {class: 'error'}, `runs out in ${duration(p.runway_s)} at this window's burn`);
  return h('div', {class: 'budget', dataset: {policyId: p.policy_id}},
    h('div', {},
      h('div', {class: 'row'}, h('strong', {}, p.name || p.policy_id), badge(p.type), p.enabled ? null : badge('disabled', 'ignore')),
      h('div', {class: 'muted'}, `${limits(p)} · scope ${p.scope}`)),
    h('div', {},
      bar,
      h('div', {class: 'figures'},
        figure('spent', p.spent, amount(p.spent, p.unit)),
        figure('reserved', p.reserved, amount(p.reserved, p.unit)),
        figure('limit', p.limit, amount(p.limit, p.unit)),
        figure('remaining', p.remaining, amount(p.remaining, p.unit)),
        figure('used', p.utilisation, pct(p.utilisation)),
        p.resets_at ? h('span', {}, `resets in ${duration(p.resets_in_s)} (${time(p.resets_at)})`)
          : h('span', {}, 'per session/task: no current window'),
        runway)));
}

function emptyBudgets() {
  const form = h('form', {class: 'grid'},
    field('Period', select('period', [['daily', 'daily'], ['hourly', 'hourly'], ['weekly', 'weekly'], ['monthly', 'monthly']], 'daily')),
    field('Cost limit (USD)', h('input', {name: 'cost_limit', type: 'number', min: '0', step: 'any', required: true, value: '10'})),
    field('Type', select('type', [['hard_limit', 'hard limit (refuse)'], ['soft_limit', 'soft limit'], ['warn', 'warn only']], 'hard_limit')),
    action('Set the limit', null, {type: 'submit'}));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const made = await attempt(() => api('/api/policies', {method: 'POST', body: {
      period: data.period, type: data.type, cost_limit: Number(data.cost_limit)}}), 'Budget set');
    if (made) refresh();
  });
  return h('div', {class: 'empty', dataset: {empty: 'budgets'}},
    h('h3', {}, 'No budget yet: every call is tracked, none is limited.'),
    h('p', {}, 'Set one from a shell:'),
    h('pre', {}, 'budget set-limit daily 10 --policy-type hard_limit'),
    h('p', {}, 'or here (the Policies tab has every option: scope, tokens, thresholds):'),
    form);
}

function latestCalls() {
  return table([
    {label: 'Time', value: (r) => time(r.timestamp)},
    {label: 'Provider', value: (r) => r.provider},
    {label: 'Model', value: (r) => r.model},
    {label: 'Component', value: (r) => r.component},
    {label: 'Tokens', num: true, value: (r) => tokens(r.total_tokens)},
    {label: 'Cost', num: true, value: (r) => money(r.total_cost)},
  ], latest.map((r) => ({...r, _dataset: {recordId: r.record_id}})),
  'No call yet. Point an SDK at this proxy (base URL http://HOST:8013/v1) and calls show up here as they finish.');
}

async function refresh() {
  const [summary, open] = await Promise.all([
    attempt(() => api('/ui/api/summary')),
    attempt(() => api('/api/alerts', {query: {acknowledged: 'false', limit: 1000}})),
  ]);
  if (!summary) return;
  const budgets = summary.policies.length
    ? h('div', {}, summary.policies.map(budgetRow)) : emptyBudgets();
  root.replaceChildren(
    cards(summary, open ? open.length : null),
    h('div', {class: 'panel', id: 'budgets'}, h('h2', {}, 'Budgets, current windows'), budgets),
    h('div', {class: 'panel', id: 'latest-calls'}, h('h2', {}, 'Latest calls'), latestCalls()),
  );
  root.dataset.updated = summary.time;
}

const refreshSoon = debounce(() => { if (ctx.isActive('dashboard')) refresh(); }, 200);

export default {
  id: 'dashboard',
  title: 'Dashboard',
  init(section, context) {
    root = section;
    ctx = context;
    setInterval(() => { if (ctx.isActive('dashboard') && !document.hidden) refresh(); }, TICK_MS);
  },
  async show() {
    const records = await attempt(() => api('/api/usage/records', {query: {limit: LATEST_CALLS}}));
    if (records) latest = records;
    await refresh();
  },
  onEvent(event) {
    if (event.type === 'usage_recorded') {
      latest = [event.payload, ...latest.filter((r) => r.record_id !== event.payload.record_id)].slice(0, LATEST_CALLS);
    }
    if (['usage_recorded', 'budget_exceeded', 'alert_raised', 'alert_acknowledged', 'policy_created',
      'policy_deleted', 'policy_updated'].includes(event.type)) refreshSoon();
  },
};
