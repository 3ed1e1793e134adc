// Alerts: thresholds crossed, limits reached, price changes; acknowledge.

import {api} from '../api.js';
import {action, attempt, badge, field, h, select, table} from '../dom.js';
import {time} from '../format.js';

let root = null;
let ctx = null;
let show = 'false';
const els = {};

async function acknowledge(alert) {
  if (await attempt(() => api(`/api/alerts/${encodeURIComponent(alert.alert_id)}/acknowledge`, {method: 'POST', body: {acknowledged_by: 'dashboard'}}),
    'Alert acknowledged')) load();
}

async function load() {
  const alerts = await attempt(() => api('/api/alerts', {query: {acknowledged: show, limit: 500}}));
  if (!alerts) return;
  els.list.replaceChildren(table([
    {label: 'Raised', value: (a) => time(a.created_at)},
    {label: 'Severity', value: (a) => badge(a.severity)},
    {label: 'Type', value: (a) => a.type.replaceAll('_', ' ')},
    {label: 'Message', value: (a) => a.message},
    {label: 'Policy', value: (a) => (a.policy_id ? h('span', {class: 'mono'}, a.policy_id) : '')},
    {label: 'Acknowledged', value: (a) => (a.acknowledged
      ? `${time(a.acknowledged_at)}${a.acknowledged_by ? ` by ${a.acknowledged_by}` : ''}`
      : action('Acknowledge', () => acknowledge(a), {dataset: {ack: a.alert_id}}))},
  ], alerts.map((a) => ({...a, _dataset: {alertId: a.alert_id}})),
  show === 'false' ? 'No open alert. Alerts are raised when a policy passes its warning or action threshold or its limit, and when prices change.'
    : 'No alert yet.'));
}

export default {
  id: 'alerts',
  title: 'Alerts',
  init(section, context) {
    root = section;
    ctx = context;
    els.list = h('div', {id: 'alert-list'});
    const filter = select('acknowledged', [['false', 'open'], ['', 'all'], ['true', 'acknowledged']], 'false');
    filter.addEventListener('change', () => { show = filter.value; load(); });
    root.append(h('div', {class: 'panel'}, h('div', {class: 'row'}, h('h2', {}, 'Alerts'), h('span', {class: 'spacer'}), field('Show', filter)), els.list));
  },
  show() { return load(); },
  onEvent(event) { if (event.topic === 'alerts' && ctx.isActive('alerts')) load(); },
};
