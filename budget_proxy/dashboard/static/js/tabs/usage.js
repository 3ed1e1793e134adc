// Usage: records with filters and paging, the totals of the filter, spend per hour or day by
// model, component or provider (Chart.js), and the CSV export of the same records.

import {api, download} from '../api.js';
import {attempt, debounce, field, h, select, table} from '../dom.js';
import {count, getZone, money, time, zonedToIso} from '../format.js';

const PAGE = 50;
const COLOURS = ['#2f5bd3', '#1f8a4c', '#b7791f', '#c0392b', '#5b3fa0', '#138496', '#8a6d3b', '#7f8c8d'];
let root = null;
let ctx = null;
let form = null;
let chart = null;
let offset = 0;
const els = {};

function filters() {
  const data = Object.fromEntries(new FormData(form));
  return {
    provider: data.provider.trim(), model: data.model.trim(), component: data.component.trim(),
    session_id: data.session_id.trim(), since: zonedToIso(data.since), until: zonedToIso(data.until),
  };
}

function buildForm() {
  const text = (name, label) => field(label, h('input', {name, type: 'text', autocomplete: 'off'}));
  const when = (name, label) => field(`${label} (${getZone()})`, h('input', {name, type: 'datetime-local'}));
  form = h('form', {class: 'grid', id: 'usage-filters'},
    text('provider', 'Provider'), text('model', 'Model'), text('component', 'Component'),
    text('session_id', 'Session'), when('since', 'From'), when('until', 'Until'),
    field('Chart', select('period', [['hourly', 'per hour, today'], ['daily', 'per day, last 30 days']], 'hourly')),
    field('Split by', select('by', [['model', 'model'], ['component', 'component'], ['provider', 'provider']], 'model')),
    h('div', {class: 'row'},
      h('button', {type: 'submit'}, 'Apply'),
      h('button', {type: 'button', class: 'secondary', id: 'export-csv', onclick: exportCsv}, 'Export CSV')));
  form.addEventListener('submit', (e) => { e.preventDefault(); offset = 0; load(); });
  form.addEventListener('change', (e) => { if (['period', 'by'].includes(e.target.name)) loadChart(); });
}

async function exportCsv() {
  await attempt(() => download('/api/reports/export', {...filters(), format: 'csv'}, 'budget-usage.csv'),
    'CSV export downloaded');
}

async function loadChart() {
  const data = Object.fromEntries(new FormData(form));
  const spend = await attempt(() => api('/ui/api/spend', {query: {
    ...filters(), period: data.period, by: data.by, days: data.period === 'daily' ? 30 : 1}}));
  if (!spend) return;
  els.totals.replaceChildren(h('span', {},
    'Total of the filter: ', h('b', {dataset: {field: 'total_cost'}}, money(spend.totals.total_cost)),
    ` · ${count(spend.totals.requests)} calls · ${count(spend.totals.total_tokens)} tokens`,
    spend.totals.truncated ? h('span', {class: 'error'}, ' (range cut short: narrow the filter)') : null));
  const datasets = spend.series.map((s, i) => ({
    label: s.name, data: s.values, backgroundColor: COLOURS[i % COLOURS.length], stack: 'spend'}));
  if (!window.Chart) return;
  if (chart) chart.destroy();
  chart = new window.Chart(els.canvas, {
    type: 'bar',
    data: {labels: spend.labels.map((l) => (spend.period === 'hourly' ? l.slice(-5) : l)), datasets},
    options: {
      animation: false, maintainAspectRatio: false,
      scales: {x: {stacked: true}, y: {stacked: true, ticks: {callback: (v) => money(v)}}},
      plugins: {tooltip: {callbacks: {label: (c) => `${c.dataset.label}: ${money(c.parsed.y)}`}}},
    },
  });
}

async function loadRecords() {
  const records = await attempt(() => api('/api/usage/records', {query: {...filters(), limit: PAGE, offset}}));
  if (!records) return;
  els.records.replaceChildren(table([
    {label: 'Time', value: (r) => time(r.timestamp)},
    {label: 'Provider', value: (r) => r.provider},
    {label: 'Model', value: (r) => r.model},
    {label: 'Component', value: (r) => r.component},
    {label: 'Session', value: (r) => r.session_id || ''},
    {label: 'Input', num: true, value: (r) => count(r.input_tokens + r.cached_input_tokens + r.cache_write_tokens)},
    {label: 'Output', num: true, value: (r) => count(r.output_tokens)},
    {label: 'Cost', num: true, value: (r) => money(r.total_cost)},
    {label: 'Status', value: (r) => r.status},
  ], records.map((r) => ({...r, _dataset: {recordId: r.record_id}})),
  offset ? 'No more records.' : 'No usage recorded for this filter yet.'));
  els.page.textContent = records.length ? `records ${offset + 1}–${offset + records.length}` : '';
  els.prev.disabled = offset === 0;
  els.next.disabled = records.length < PAGE;
}

async function load() { await Promise.all([loadRecords(), loadChart()]); }

const reloadSoon = debounce(() => { if (ctx.isActive('usage') && offset === 0) load(); }, 300);

export default {
  id: 'usage',
  title: 'Usage',
  init(section, context) {
    root = section;
    ctx = context;
    buildForm();
    els.canvas = h('canvas', {id: 'spend-chart', 'aria-label': 'spend per window'});
    els.totals = h('div', {class: 'figures', id: 'usage-totals'});
    els.records = h('div', {id: 'usage-records'});
    els.page = h('span', {class: 'muted'});
    els.prev = h('button', {type: 'button', class: 'secondary', onclick: () => { offset = Math.max(0, offset - PAGE); loadRecords(); }}, 'Newer');
    els.next = h('button', {type: 'button', class: 'secondary', onclick: () => { offset += PAGE; loadRecords(); }}, 'Older');
    root.append(
      h('div', {class: 'panel'}, h('h2', {}, 'Filter'), form),
      h('div', {class: 'panel'}, h('h2', {}, 'Spend'), els.totals, h('div', {class: 'chart-box'}, els.canvas)),
      h('div', {class: 'panel'}, h('h2', {}, 'Records'), els.records, h('div', {class: 'pager'}, els.page, els.prev, els.next)));
  },
  show() { return load(); },
  onEvent(event) { if (event.type === 'usage_recorded') reloadSoon(); },
};
