// Prices: the prices in force, a model's history, a manual price, a run of the price update.

import {api} from '../api.js';
import {action, attempt, badge, field, h, table} from '../dom.js';
import {time} from '../format.js';

const SHOWN = 200;  // rows rendered at once; the filter narrows the rest
let root = null;
let ctx = null;
let prices = [];
const els = {};

const perMtok = (v) => (v === null || v === undefined ? '—' : `$${v} / Mtok`);

function render() {
  const words = els.filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const matching = prices.filter((p) => words.every((w) => `${p.provider} ${p.model} ${p.aliases.join(' ')}`.toLowerCase().includes(w)));
  els.count.textContent = matching.length > SHOWN
    ? `${matching.length} prices; the first ${SHOWN} shown, narrow the filter` : `${matching.length} prices`;
  els.list.replaceChildren(table([
    {label: 'Provider', value: (p) => p.provider},
    {label: 'Model', value: (p) => h('span', {}, p.model, p.aliases.length ? h('div', {class: 'muted'}, p.aliases.slice(0, 3).join(', ')) : null)},
    {label: 'Input', num: true, value: (p) => perMtok(p.input_usd_per_mtok)},
    {label: 'Output', num: true, value: (p) => perMtok(p.output_usd_per_mtok)},
    {label: 'Cached input', num: true, value: (p) => perMtok(p.cache_read_usd_per_mtok)},
    {label: 'Tier', value: (p) => p.tier.replaceAll('_', ' ')},
    {label: 'Since', value: (p) => time(p.effective_date)},
    {label: 'Source', value: (p) => h('span', {}, p.source, ' ', p.verified ? null : badge('unverified', 'warning'))},
    {label: '', value: (p) => h('button', {type: 'button', class: 'secondary', onclick: () => history(p)}, 'History')},
  ], matching.slice(0, SHOWN), 'No price matches the filter.'));
}

async function history(p) {
  const rows = await attempt(() => api(`/api/prices/${encodeURIComponent(p.provider)}/${p.model.split('/').map(encodeURIComponent).join('/')}/history`));
  if (!rows) return;
  els.history.hidden = false;
  els.history.replaceChildren(h('h2', {}, `Price history: ${p.provider} ${p.model}`), table([
    {label: 'From', value: (r) => time(r.effective_date)},
    {label: 'Until', value: (r) => (r.end_date ? time(r.end_date) : 'in force')},
    {label: 'Input', num: true, value: (r) => perMtok(r.input_usd_per_mtok)},
    {label: 'Output', num: true, value: (r) => perMtok(r.output_usd_per_mtok)},
    {label: 'Source', value: (r) => r.source},
  ], rows, 'No history.'));
  els.history.scrollIntoView({block: 'start'});
}

function buildForm() {
  const text = (name, label, props = {}) => field(label, h('input', {name, type: 'text', autocomplete: 'off', ...props}));
  const form = h('form', {class: 'grid', id: 'price-form'},
    text('provider', 'Provider', {required: true}), text('model', 'Model', {required: true}),
    text('input_usd_per_mtok', 'Input (USD / Mtok)', {inputmode: 'decimal', required: true}),
    text('output_usd_per_mtok', 'Output (USD / Mtok)', {inputmode: 'decimal', required: true}),
    text('note', 'Note'),
    action('Set price', null, {type: 'submit'}));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries([...new FormData(form)].filter(([, v]) => String(v).trim() !== ''));
    if (await attempt(() => api('/api/prices', {method: 'POST', body: data}), 'Price set: a new version is in force')) {
      form.reset();
      load();
    }
  });
  return form;
}

async function runUpdate() {
  const report = await attempt(() => api('/api/prices/update', {method: 'POST'}));
  if (report) {
    els.update.textContent = `Price update: ${report.status || 'done'}`;
    load();
  }
}

async function load() {
  const data = await attempt(() => api('/api/prices'));
  if (!data) return;
  prices = data;
  render();
}

export default {
  id: 'prices',
  title: 'Prices',
  init(section, context) {
    root = section;
    ctx = context;
    els.filter = h('input', {type: 'search', placeholder: 'filter: provider or model', id: 'price-filter'});
    els.filter.addEventListener('input', render);
    els.count = h('span', {class: 'muted'});
    els.list = h('div', {id: 'price-list'});
    els.history = h('div', {class: 'panel', id: 'price-history', hidden: true});
    els.update = h('span', {class: 'muted'});
    root.append(
      h('div', {class: 'panel'}, h('div', {class: 'row'}, h('h2', {}, 'Prices in force'), h('span', {class: 'spacer'}),
        els.update, action('Run price update', runUpdate, {class: 'secondary', title: 'fetch and verify prices from the configured sources'})),
      h('div', {class: 'row'}, els.filter, els.count), els.list),
      els.history,
      h('div', {class: 'panel'}, h('h2', {}, 'Set a price'), buildForm()));
  },
  show() { return load(); },
  onEvent(event) { if (event.topic === 'prices' && ctx.isActive('prices')) load(); },
};
