// Live events from GET /api/events (Server-Sent Events). Read with fetch, not EventSource, so the token
// goes in the Authorization header and never in the URL. Reconnects with backoff and Last-Event-ID; the
// server ends a stream when the token expires (or after a while: `end`), and the next one uses the current token.
import { session } from './auth.js';

export function connectLive({ onEvent, onResync, onStatus }) {
  let lastEventId = null;
  let stopped = false;
  let controller = null;
  let attempt = 0;
  let ended = false;

  function dispatch(block) {
    let event = 'message';
    let id = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const [field, ...rest] = line.split(':');
      const value = rest.join(':').replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id') id = value;
    }
    if (id) lastEventId = id;
    if (event === 'approval') onEvent(JSON.parse(data.join('\n')));
    else if (event === 'resync') onResync();
    else if (event === 'ready') { attempt = 0; onStatus('live'); }
    else if (event === 'end' || event === 'expired') ended = true;  // a planned end: reconnect at once
  }

  async function run() {
    while (!stopped) {
      const current = session();
      if (!current) return;
      controller = new AbortController();
      const headers = { Authorization: `Bearer ${current.accessToken}`, Accept: 'text/event-stream' };
      if (lastEventId) headers['Last-Event-ID'] = lastEventId;
      try {
        const response = await fetch('/api/events', { headers, signal: controller.signal, cache: 'no-store' });
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, '\n');
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            dispatch(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (error) {
        if (stopped) return;
      }
      if (stopped) return;
      if (ended) {
        ended = false;
        continue;
      }
      onStatus('reconnecting');
      attempt += 1;
      await new Promise((resolve) => { setTimeout(resolve, Math.min(500 * 2 ** attempt, 15000)); });
    }
  }

  run();
  return () => { stopped = true; controller?.abort(); };
}
