// Live events over the proxy's WebSocket (`/ws/budget/updates`, subscribed to every topic),
// reconnecting with exponential back-off and jitter after any drop.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;
const CONTROL = new Set(['connected', 'subscription_ack', 'pong', 'error']);

export function backoffMs(attempt) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return base * (0.8 + Math.random() * 0.4);
}

export class Live {
  /** `onEvent(event)` for every budget event; `onState('connecting'|'live'|'reconnecting')`. */
  constructor(tokenValue, onEvent, onState) {
    this.token = tokenValue;
    this.onEvent = onEvent;
    this.onState = onState;
    this.attempt = 0;
    this.socket = null;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.onState('connecting');
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000);
    this.onState('off');
  }

  connect() {
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    const query = this.token ? `?token=${encodeURIComponent(this.token)}` : '';
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/budget/updates${query}`);
    this.socket = socket;
    socket.addEventListener('open', () => {
      socket.send(JSON.stringify({type: 'subscription', topic: 'subscription', payload: {topic: 'all'}}));
    });
    socket.addEventListener('message', (msg) => {
      const event = JSON.parse(msg.data);
      if (event.type === 'subscription_ack') {
        const reconnected = this.attempt > 0;
        this.attempt = 0;
        this.onState('live', reconnected);
      }
      if (!CONTROL.has(event.type)) this.onEvent(event);
    });
    socket.addEventListener('close', () => {
      if (this.stopped || this.socket !== socket) return;
      this.onState('reconnecting');
      this.timer = setTimeout(() => this.connect(), backoffMs(this.attempt));
      this.attempt += 1;
    });
  }
}
