// The admin API with the signed-in token. The token lives in sessionStorage: this tab only,
// gone when it closes, sent only to this origin.

const TOKEN_KEY = 'budget-proxy-token';

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function url(path, query) {
  const u = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== '' && value !== null && value !== undefined) u.searchParams.set(key, value);
  }
  return u;
}

function headers(extra) {
  const out = {Accept: 'application/json', ...extra};
  const t = token.get();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** JSON in, JSON out; a non-2xx answer throws ApiError with the API's own message. */
export async function api(path, {method = 'GET', body, query} = {}) {
  const init = {method, headers: headers(body === undefined ? {} : {'Content-Type': 'application/json'})};
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await fetch(url(path, query), init);
  const isJson = (resp.headers.get('Content-Type') || '').includes('json');
  const data = isJson ? await resp.json() : await resp.text();
  if (!resp.ok) {
    const message = (isJson && data.error && data.error.message) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, message);
  }
  return data;
}

/** Fetch a file with the token and hand it to the browser as a download. */
export async function download(path, query, filename) {
  const resp = await fetch(url(path, query), {headers: headers({Accept: 'text/csv'})});
  if (!resp.ok) throw new ApiError(resp.status, `${resp.status} ${resp.statusText}`);
  const href = URL.createObjectURL(await resp.blob());
  const a = document.createElement('a');
  a.href = href;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

let openapi = null;

/** Whether the running proxy serves `method path` (from its OpenAPI document), so the page
 * works with older and newer proxies alike. */
export async function serves(method, path) {
  if (openapi === null) openapi = api('/api/openapi.json').catch(() => ({paths: {}}));
  const doc = await openapi;
  return Boolean(doc.paths && doc.paths[path] && doc.paths[path][method.toLowerCase()]);
}
