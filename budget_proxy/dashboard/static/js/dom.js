// Building DOM from data: text always goes in as text (never innerHTML), so names and
// messages from the API cannot inject markup.

let canAct = false;

/** Whether the signed-in token may change things (admin); action buttons follow it. */
export function setCanAct(value) { canAct = value; }

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A button that changes something: disabled (with the reason) unless the token is admin. */
export function action(label, onclick, props = {}) {
  const disabled = !canAct || props.disabled;
  return h('button', {
    type: props.type || 'button', class: props.class, onclick, disabled,
    title: canAct ? props.title : 'needs the admin token', dataset: props.dataset,
  }, label);
}

/** A table: `columns` are `{label, value(row), num}`; an empty `rows` shows `empty`. */
export function table(columns, rows, empty) {
  if (!rows.length) return h('div', {class: 'empty'}, empty);
  const head = h('tr', {}, columns.map((c) => h('th', {class: c.num ? 'num' : null}, c.label)));
  const body = rows.map((row) => h('tr', {dataset: row._dataset},
    columns.map((c) => h('td', {class: c.num ? 'num' : null}, c.value(row)))));
  return h('div', {class: 'table-wrap'}, h('table', {}, h('thead', {}, head), h('tbody', {}, body)));
}

export function badge(text, kind) { return h('span', {class: `badge ${kind || text}`}, text); }

/** Non-empty fields of a form, as strings (checkboxes as booleans). */
export function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === 'checkbox') out[el.name] = el.checked;
    else if (el.value.trim() !== '') out[el.name] = el.value.trim();
  }
  return out;
}

export function field(label, input) { return h('label', {}, label, input); }

export function select(name, options, value) {
  return h('select', {name}, options.map(([v, text]) =>
    h('option', {value: v, selected: v === value}, text)));
}

/** Show a short message in the corner (errors in red); never the browser console. */
export function toast(message, kind = 'info') {
  const el = h('div', {class: `toast ${kind}`}, message);
  document.getElementById('toasts').append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}

/** Run an async action, reporting failure as a toast; returns its result or undefined. */
export async function attempt(fn, success) {
  try {
    const result = await fn();
    if (success) toast(success);
    return result;
  } catch (err) {
    toast(err.message || String(err), 'error');
    return undefined;
  }
}

/** `fn` once, `ms` after the last of a burst of calls (live events come in bursts). */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
