// Keys: virtual `bp-` keys components use as their provider key; create (the secret is shown
// once), revoke.

import {api} from '../api.js';
import {action, attempt, badge, field, h, table} from '../dom.js';
import {time} from '../format.js';

let root = null;
const els = {};

function buildForm() {
  const text = (name, label, props = {}) => field(label, h('input', {name, type: 'text', autocomplete: 'off', ...props}));
  const form = h('form', {class: 'grid', id: 'key-form'},
    text('component', 'Component', {required: true}), text('name', 'Name'),
    action('Create key', null, {type: 'submit'}));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = Object.fromEntries([...new FormData(form)].filter(([, v]) => String(v).trim() !== ''));
    const made = await attempt(() => api('/api/keys', {method: 'POST', body: data}));
    if (!made) return;
    form.reset();
    els.secret.hidden = false;
    els.secret.replaceChildren(
      h('strong', {}, `Key for ${made.key.component}: copy the secret now, it is not shown again.`),
      h('pre', {id: 'key-secret'}, made.secret),
      h('div', {class: 'muted'}, 'Use it as the provider API key with this proxy\'s base URL; its calls are charged to the component.'),
      h('button', {type: 'button', class: 'secondary', onclick: () => { els.secret.hidden = true; els.secret.replaceChildren(); }}, 'Done'));
    load();
  });
  return form;
}

async function revoke(key) {
  if (!window.confirm(`Revoke key ${key.name || key.key_id}? Calls made with it are refused from now on.`)) return;
  if (await attempt(() => api(`/api/keys/${encodeURIComponent(key.key_id)}/revoke`, {method: 'POST'}), 'Key revoked')) load();
}

async function load() {
  const keys = await attempt(() => api('/api/keys'));
  if (!keys) return;
  els.list.replaceChildren(table([
    {label: 'Name', value: (k) => h('span', {}, k.name || '—', h('div', {class: 'muted mono'}, k.key_id))},
    {label: 'Component', value: (k) => k.component},
    {label: 'Starts with', value: (k) => h('code', {}, `${k.hint}…`)},
    {label: 'Created', value: (k) => time(k.created_at)},
    {label: 'Expires', value: (k) => (k.expires_at ? time(k.expires_at) : 'never')},
    {label: 'State', value: (k) => (k.revoked ? badge(`revoked ${time(k.revoked_at)}`, 'critical') : badge('active', 'ok'))},
    {label: '', value: (k) => (k.revoked ? '' : action('Revoke', () => revoke(k), {class: 'danger', dataset: {revoke: k.key_id}}))},
  ], keys.map((k) => ({...k, _dataset: {keyId: k.key_id}})), h('div', {},
    h('h3', {}, 'No virtual key.'),
    h('p', {}, 'A virtual key (bp-...) names the component that pays for a call, without giving it a provider key. ',
      'From a shell: ', h('code', {}, 'budget keys create --component my-agent')))));
}

export default {
  id: 'keys',
  title: 'Keys',
  init(section) {
    root = section;
    els.list = h('div', {id: 'key-list'});
    els.secret = h('div', {class: 'secret', id: 'key-created', hidden: true});
    root.append(h('div', {class: 'panel'}, h('h2', {}, 'Virtual keys'), els.secret, els.list),
      h('div', {class: 'panel'}, h('h2', {}, 'New key'), buildForm()));
  },
  show() { return load(); },
  onEvent() {},
};
