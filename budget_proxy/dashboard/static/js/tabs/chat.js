// Budget Chat: questions about spend, savings and models. With a proxy that serves
// `/api/assistant/chat` it talks to that; otherwise each question goes to the deterministic
// assistant endpoint it is about (analyze, optimize, recommend-model), and says so.

import {api, serves} from '../api.js';
import {attempt, h} from '../dom.js';
import {count, money, pct} from '../format.js';

const SUGGESTIONS = ['How is my spend going?', 'How can I spend less?', 'Which model should I use to summarise support tickets?'];
let root = null;
const history = [];
const els = {};

/** Which deterministic endpoint a question is about. */
export function route(message) {
  const text = message.toLowerCase();
  if (/recommend|which model|what model|model for|best model/.test(text)) return 'recommend-model';
  if (/optimi|save|saving|cheaper|reduce|spend less|cut/.test(text)) return 'optimize';
  return 'analyze';
}

function list(items) { return items.length ? h('ul', {}, items.map((t) => h('li', {}, t))) : null; }

function renderDeterministic(kind, a) {
  if (kind === 'analyze') {
    return [
      `Since ${a.since.slice(0, 10)}: ${money(a.totals.total_cost)} over ${count(a.totals.requests)} calls; the trend is ${a.trend.direction}.`,
      list(a.findings),
      a.policies_at_risk.length ? list(a.policies_at_risk.map((p) => `${p.name || p.policy_id} (${p.period}) at ${pct(p.utilisation)}`)) : null,
    ];
  }
  if (kind === 'optimize') {
    return [
      a.recommendations.length ? `Possible savings: ${money(a.potential_savings_usd)}.` : 'Nothing to optimise in the recorded usage.',
      list(a.recommendations.map((r) => `${r.title}: ${r.detail}`)),
    ];
  }
  return [
    `Task type: ${a.task_type} (${a.complexity}).`,
    list(a.recommendations.map((o) => `${o.provider}/${o.model}: ${money(o.cost_per_request)} a call, ${money(o.monthly_cost)} a month${o.within_budget ? '' : ' (over budget)'}`)),
  ];
}

function say(role, ...content) {
  const msg = h('div', {class: `msg ${role}`}, ...content);
  els.log.append(msg);
  els.log.scrollTop = els.log.scrollHeight;
  return msg;
}

async function ask(message) {
  say('user', message);
  els.input.value = '';
  els.send.disabled = true;
  try {
    if (await serves('POST', '/api/assistant/chat')) {
      const answer = await attempt(() => api('/api/assistant/chat', {method: 'POST', body: {message, history, stream: false}}));
      if (!answer) return;
      history.push({role: 'user', content: message}, {role: 'assistant', content: answer.answer});
      say('assistant', answer.answer, h('div', {class: 'muted'}, answer.llm_used ? `answered by ${answer.model}` : 'computed from the records (no LLM)'));
      return;
    }
    const kind = route(message);
    const body = kind === 'recommend-model' ? {task_description: message} : {};
    const answer = await attempt(() => api(`/api/assistant/${kind}`, {method: 'POST', body}));
    if (answer) say('assistant', ...renderDeterministic(kind, answer), h('div', {class: 'muted'}, `${kind}: computed from the records by fixed rules (no LLM)`));
  } finally {
    els.send.disabled = false;
  }
}

export default {
  id: 'chat',
  title: 'Chat',
  init(section) {
    root = section;
    els.log = h('div', {class: 'chat-log', id: 'chat-log'});
    els.input = h('input', {type: 'text', name: 'message', placeholder: 'Ask about spend, savings or models', autocomplete: 'off', required: true});
    els.send = h('button', {type: 'submit'}, 'Send');
    const form = h('form', {class: 'row', id: 'chat-form'}, els.input, els.send);
    els.input.classList.add('spacer');
    form.addEventListener('submit', (e) => { e.preventDefault(); if (els.input.value.trim()) ask(els.input.value.trim()); });
    root.append(h('div', {class: 'panel'}, h('h2', {}, 'Budget Chat'),
      h('div', {class: 'row'}, SUGGESTIONS.map((s) => h('button', {type: 'button', class: 'secondary', onclick: () => ask(s)}, s))),
      els.log, form));
  },
  show() {},
  onEvent() {},
};
