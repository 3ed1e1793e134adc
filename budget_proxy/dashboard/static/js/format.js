// Numbers and times as people read them: money with enough decimals to be exact for small
// amounts (never 2.175e-05), limits with their units, times in the proxy's time zone.

let zone = 'UTC';

export function setZone(tz) { zone = tz || 'UTC'; }
export function getZone() { return zone; }

const moneyFormats = new Map();

export function money(usd) {
  if (usd === null || usd === undefined) return '—';
  const abs = Math.abs(usd);
  const digits = abs === 0 || abs >= 1 ? 2 : abs >= 0.01 ? 4 : 6;
  if (!moneyFormats.has(digits)) {
    moneyFormats.set(digits, new Intl.NumberFormat('en-US', {
      style: 'currency', currency: 'USD', minimumFractionDigits: digits, maximumFractionDigits: digits,
    }));
  }
  return moneyFormats.get(digits).format(usd);
}

export function count(n) {
  return n === null || n === undefined ? '—' : Math.round(n).toLocaleString('en-US');
}

export function tokens(n) { return n === null || n === undefined ? '—' : `${count(n)} tokens`; }

/** An amount in a status row's unit: `usd` or `tokens`. */
export function amount(value, unit) { return unit === 'usd' ? money(value) : tokens(value); }

const PER = {minutely: 'minute', hourly: 'hour', daily: 'day', weekly: 'week', monthly: 'month',
  per_session: 'session', per_task: 'task'};

export function per(period) { return PER[period] || period; }

/** `$5.00 / day`, `10,000 tokens / hour`, or both limits of a policy. */
export function limits(policy) {
  const parts = [];
  if (policy.cost_limit !== null && policy.cost_limit !== undefined) parts.push(money(policy.cost_limit));
  if (policy.token_limit !== null && policy.token_limit !== undefined) parts.push(tokens(policy.token_limit));
  if (policy.request_limit !== null && policy.request_limit !== undefined) parts.push(`${count(policy.request_limit)} calls`);
  return parts.length ? `${parts.join(' and ')} / ${per(policy.period)}` : 'no limit (tracked only)';
}

export function pct(ratio) {
  if (ratio === null || ratio === undefined) return '—';
  const value = ratio * 100;
  return `${value < 10 && value > 0 ? value.toFixed(1) : Math.round(value)}%`;
}

const timeFormat = () => new Intl.DateTimeFormat('en-GB', {
  timeZone: zone, year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit',
  minute: '2-digit', second: '2-digit', hourCycle: 'h23', timeZoneName: 'short',
});

export function time(iso) { return iso ? timeFormat().format(new Date(iso)) : '—'; }

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

export function ms(value) { return value === null || value === undefined ? '—' : `${value.toFixed(value < 10 ? 2 : 0)} ms`; }

/** Offset of `zone` from UTC at instant `utcMs`, in ms. */
function zoneOffset(utcMs) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat('en-US', {
    timeZone: zone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  }).formatToParts(new Date(utcMs)).map((p) => [p.type, p.value]));
  const asUtc = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
  return asUtc - utcMs;
}

/** A `datetime-local` value read as a wall time in the proxy's zone, as an ISO UTC string. */
export function zonedToIso(local) {
  if (!local) return '';
  const [date, clock = '00:00'] = local.split('T');
  const [y, mo, d] = date.split('-').map(Number);
  const [hh, mm] = clock.split(':').map(Number);
  const wall = Date.UTC(y, mo - 1, d, hh, mm);
  let utc = wall - zoneOffset(wall);
  utc = wall - zoneOffset(utc);  // a second pass settles times near a DST change
  return new Date(utc).toISOString();
}
