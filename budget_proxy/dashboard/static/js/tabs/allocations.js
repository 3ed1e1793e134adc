// Allocations: tokens held for a context, drawn down by its calls; create and release.

import {api} from '../api.js';
import {action, attempt, badge, field, h, table} from '../dom.js';
import {count, money, time, tokens} from '../format.js';

let root = null;
let ctx = null;
const els = {};

function buildForm() {
  const text = (name, label, props = {}) => field(label, h('input', {name, type: 'text', autocomplete: 'off', ...props}));
  const form = h('form', {class: 'grid', id: 'allocation-form'},
    text('context_id', 'Context id', {required: true}),
    text('component', 'Component', {required: true}),
    field('Tokens', h('input', {name: 'tokens_allocated', type: 'number', min: '1', step: '1', required: true})),
    field('Expires after (s)', h('input', {name: 'ttl_s', type: 'number', min: '1', step: '1', placeholder: 'never'})),
    field('Priority', h('input', {name: 'priority', type: 'number', min: '0', max: '1000', step: '1', value: '5'})),
    text('provider', 'Provider', {placeholder: 'any'}),
    text('model', 'Model', {placeholder: 'any'}),
    action('Allocate', null, {type: 'submit'}));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries([...new FormData(form)].filter(([, v]) => String(v).trim() !== ''));
    for (const key of ['tokens_allocated', 'ttl_s', 'priority']) if (key in data) data[key] = Number(data[key]);
    if (await attempt(() => api('/api/allocations', {method: 'POST', body: data}), 'Allocation created')) {
      form.reset();
      load();
    }
  });
  return form;
}

async function release(a) {
  if (await attempt(() => api(`/api/allocations/${encodeURIComponent(a.allocation_id)}/release`, {method: 'POST'}),
    'Allocation released: unused tokens went back to the budgets')) load();
}

async function load() {
  const allocs = await attempt(() => api('/api/allocations'));
  if (!allocs) return;
  els.list.replaceChildren(table([
    {label: 'Context', value: (a) => h('span', {}, h('strong', {}, a.context_id), h('div', {class: 'muted mono'}, a.allocation_id))},
    {label: 'Component', value: (a) => a.component},
    {label: 'State', value: (a) => badge(a.state, a.is_active ? 'ok' : 'ignore')},
    {label: 'Allocated', num: true, value: (a) => tokens(a.tokens_allocated)},
    {label: 'Used', num: true, value: (a) => count(a.tokens_used)},
    {label: 'In flight', num: true, value: (a) => count(a.tokens_reserved)},
    {label: 'Remaining', num: true, value: (a) => count(a.remaining_tokens)},
    {label: 'Cost used', num: true, value: (a) => money(a.cost_used)},
    {label: 'Expires', value: (a) => (a.expiration_time ? time(a.expiration_time) : 'never')},
    {label: '', value: (a) => (a.is_active ? action('Release', () => release(a), {class: 'danger', dataset: {release: a.allocation_id}}) : '')},
  ], allocs.map((a) => ({...a, _dataset: {allocationId: a.allocation_id}})), h('div', {},
    h('h3', {}, 'No allocation.'),
    h('p', {}, 'An allocation holds tokens for one context (an agent run, a batch). Calls carrying ',
      h('code', {}, 'X-Budget-Context: ID'), ' draw on it. From a shell: ',
      h('code', {}, 'budget allocate create --context-id run-42 --component agent --tokens 50000')))));
}

export default {
  id: 'allocations',
  title: 'Allocations',
  init(section, context) {
    root = section;
    ctx = context;
    els.list = h('div', {id: 'allocation-list'});
    root.append(h('div', {class: 'panel'}, h('h2', {}, 'Allocations'), els.list),
      h('div', {class: 'panel'}, h('h2', {}, 'New allocation'), buildForm()));
  },
  show() { return load(); },
  onEvent(event) { if (event.topic === 'allocations' && ctx.isActive('allocations')) load(); },
};
