// Policies: every limit with its type, scope, limits and thresholds; create, edit, delete.
// (Top-ups and replay get their buttons in the actions cell when the API serves them.)

import {api, serves} from '../api.js';
import {action, attempt, badge, field, h, select, table} from '../dom.js';
import {limits, pct} from '../format.js';

const TYPES = [['hard_limit', 'hard limit: refuse'], ['soft_limit', 'soft limit: cheaper model'],
  ['warn', 'warn: allow and alert'], ['shadow', 'shadow: would refuse, never does'], ['ignore', 'ignore: track only']];
const PERIODS = [['daily', 'daily'], ['hourly', 'hourly'], ['weekly', 'weekly'], ['monthly', 'monthly'],
  ['per_session', 'per session'], ['per_task', 'per task'], ['minutely', 'minutely']];
const TIERS = [['', 'any tier'], ['local_lightweight', 'local lightweight'], ['local_midweight', 'local midweight'],
  ['remote_heavyweight', 'remote heavyweight']];
const SCOPE = ['provider', 'model', 'component', 'task_type', 'session', 'task'];
let root = null;
let ctx = null;
let form = null;
let editing = null;
const els = {};

function buildForm() {
  const text = (name, label, props = {}) => field(label, h('input', {name, type: 'text', autocomplete: 'off', ...props}));
  const num = (name, label, props = {}) => field(label, h('input', {name, type: 'number', min: '0', step: 'any', ...props}));
  form = h('form', {class: 'grid', id: 'policy-form'},
    text('name', 'Name'),
    field('Type', select('type', TYPES, 'hard_limit')),
    field('Period', select('period', PERIODS, 'daily')),
    num('cost_limit', 'Cost limit (USD)'),
    num('token_limit', 'Token limit (tokens)', {step: '1'}),
    ...SCOPE.map((name) => text(name, `Scope: ${name.replace('_', ' ')}`, {placeholder: 'any'})),
    field('Scope: tier', select('tier', TIERS, '')),
    num('warning_threshold', 'Warning at (%)', {max: '100', value: '80'}),
    num('action_threshold', 'Action at (%)', {max: '100', value: '95'}),
    text('fallback_model', 'Soft limit: cheaper model'),
    h('label', {class: 'check'}, h('input', {name: 'enabled', type: 'checkbox', checked: true}), 'enabled'),
    h('div', {class: 'row'}, action('Create policy', null, {type: 'submit', dataset: {role: 'submit'}}),
      h('button', {type: 'button', class: 'secondary', onclick: resetForm}, 'Clear')));
  form.addEventListener('submit', (e) => { e.preventDefault(); save(); });
}

function resetForm() {
  editing = null;
  form.reset();
  els.formTitle.textContent = 'New policy';
  form.querySelector('[data-role="submit"]').textContent = 'Create policy';
}

function edit(policy) {
  form.reset();
  editing = policy;
  els.formTitle.textContent = `Edit policy ${policy.name || policy.policy_id}`;
  form.querySelector('[data-role="submit"]').textContent = 'Save changes';
  for (const el of form.elements) {
    if (!el.name) continue;
    const value = policy[el.name];
    if (el.type === 'checkbox') el.checked = Boolean(value);
    else if (el.name.endsWith('_threshold')) el.value = value === undefined ? '' : String(Math.round(value * 1000) / 10);
    else el.value = value === null || value === undefined ? '' : String(value);
  }
  form.scrollIntoView({block: 'start'});
}

function body() {
  const out = {enabled: form.elements.enabled.checked};
  for (const el of form.elements) {
    if (!el.name || el.type === 'checkbox') continue;
    const value = el.value.trim();
    if (['cost_limit', 'token_limit'].includes(el.name)) out[el.name] = value === '' ? null : Number(value);
    else if (el.name.endsWith('_threshold')) { if (value !== '') out[el.name] = Number(value) / 100; }
    else out[el.name] = value === '' ? null : value;
  }
  return out;
}

async function save() {
  const data = body();
  let saved;
  if (editing === null) {
    saved = await attempt(() => api('/api/policies', {method: 'POST', body: data}), 'Policy created');
  } else if (await serves('PUT', '/api/policies/{policy_id}')) {
    saved = await attempt(() => api(`/api/policies/${encodeURIComponent(editing.policy_id)}`, {method: 'PUT', body: data}), 'Policy saved');
  } else {  // older proxies: the same id posted again replaces the policy and keeps its spend
    saved = await attempt(() => api('/api/policies', {method: 'POST', body: {
      ...data, policy_id: editing.policy_id, budget_id: editing.budget_id, created_at: editing.created_at}}), 'Policy saved');
  }
  if (saved) { resetForm(); load(); }
}

async function remove(policy) {
  if (!window.confirm(`Delete policy ${policy.name || policy.policy_id}? Its spend history stays in the usage records.`)) return;
  if (await attempt(() => api(`/api/policies/${encodeURIComponent(policy.policy_id)}`, {method: 'DELETE'}), 'Policy deleted')) load();
}

async function load() {
  const policies = await attempt(() => api('/api/policies'));
  if (!policies) return;
  els.list.replaceChildren(table([
    {label: 'Name', value: (p) => h('span', {}, h('strong', {}, p.name || '—'), h('div', {class: 'muted mono'}, p.policy_id))},
    {label: 'Type', value: (p) => h('span', {}, badge(p.type), p.enabled ? null : [' ', badge('disabled', 'ignore')])},
    {label: 'Limit', value: (p) => limits(p)},
    {label: 'Scope', value: (p) => scopeText(p)},
    {label: 'Thresholds', value: (p) => `warn ${pct(p.warning_threshold)} · act ${pct(p.action_threshold)}`},
    {label: 'Source', value: (p) => p.source || 'API'},
    {label: '', value: (p) => h('div', {class: 'row'},
      action('Edit', () => edit(p), {class: 'secondary', dataset: {edit: p.policy_id}}),
      action('Delete', () => remove(p), {class: 'danger', dataset: {delete: p.policy_id}}))},
  ], policies.map((p) => ({...p, _dataset: {policyId: p.policy_id}})), h('div', {},
    h('h3', {}, 'No policy yet.'),
    h('p', {}, 'From a shell: ', h('code', {}, 'budget set-limit daily 10'), ', or with the form below.'))));
}

function scopeText(p) {
  const parts = [...SCOPE, 'tier'].filter((f) => p[f]).map((f) => `${f}=${p[f]}`);
  return parts.length ? parts.join(', ') : 'every request';
}

export default {
  id: 'policies',
  title: 'Policies',
  init(section, context) {
    root = section;
    ctx = context;
    buildForm();
    els.list = h('div', {id: 'policy-list'});
    els.formTitle = h('h2', {}, 'New policy');
    root.append(h('div', {class: 'panel'}, h('h2', {}, 'Policies'), els.list),
      h('div', {class: 'panel'}, els.formTitle, form));
  },
  show() { return load(); },
  onEvent(event) {
    if (event.type.startsWith('policy_') && ctx.isActive('policies')) load();
  },
};
