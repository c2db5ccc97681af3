// The retry queue and the transport.
//
// Every event is appended to the persisted queue first, so nothing lives only in memory. Every
// flush interval (and as soon as data-batch events wait), free events go out with
// fetch(keepalive); a batch leaves the queue only when the collector answered. While in flight
// its events hold a lease (`_l`), so neither this tab nor another one sharing the queue sends them
// twice. On a network error, 5xx or 429 they get their lease back and sending backs off
// exponentially (persisted, so the next page knows the collector was failing). A batch is all or
// nothing at the collector: a 4xx naming one event (`batch[i]` in its message) drops only that
// event and the rest goes again at once; any other 4xx drops the batch (retrying cannot help).
//
// When the page is hidden or unloads, whatever is free goes out with sendBeacon and leaves the
// queue, and so do in-flight batches (their keepalive requests outlive the page): trusting them
// avoids sending every event twice. If the page lives on and a batch fails, it is put back. While
// the collector is failing (or the browser is offline), nothing is beaconed: the queue stays in
// localStorage and the next page load retries it.
//
// Beyond the cap (data-cap) the oldest events are dropped; the newest event counts them in
// context.dropped (plus any count the dropped events carried), so every loss is reported.
import { c, iso, log, nav, now, safe, str } from './env.js';
import { load, save } from './store.js';

let url, I, N, M, B;
let R = 0; // no retry before this time (ms)

export const setup = (s) => {
  // data-api: the batch endpoint; by default v1/batch next to the script (served by the collector).
  url = new URL(c.api || 'v1/batch', s?.src || location);
  I = +c.interval || 2e3; // flush interval, ms
  N = +c.batch || 20; // flush as soon as this many events wait
  M = +c.cap || 200; // queue cap
  B = load().b | 0; // backoff, ms
  setInterval(flush, I);
};

/** UTF-8 size in bytes. */
export const size = (x) => new Blob([str(x)]).size;

// The collector copies the batch's sentAt into each event; leases stay home.
const body = (b) => str({ batch: b, sentAt: iso(), writeKey: c.key }, (k, v) => (k == '_l' ? void 0 : v));

// Drop the oldest events beyond the cap; the newest one counts them. An event dropped while in
// flight is not counted: it arrives, or its failed batch comes back (and is trimmed again).
const trim = (q, t = now()) => {
  let n = 0;
  let x;
  while (q[M]) (x = q.shift())._l > t || (n += 1 + (x.context.dropped | 0));
  if (n) (x = q[q.length - 1].context).dropped = (x.dropped | 0) + n;
};

/** Queue event `e` and save state `o`. */
export const push = (o, e) => {
  o.q.push(e);
  trim(o.q);
  save(o);
  o.q[N - 1] && flush();
};

export const flush = safe((hide) => {
  const t = now();
  if (hide ? B || !nav.onLine : t < R) return;
  const o = load();
  const k = []; // batches of the free (not in flight) events
  let b = [];
  let n = 0;
  let x;
  for (const e of o.q)
    if (!(e._l > t)) {
      if ((n += x = size(e)) > 6e4 && b[0]) k.push(b), (b = []), (n = x);
      b.push(e);
    }
  k.push(b);
  if (hide) return (o.q = k.filter((b) => b[0] && !nav.sendBeacon(url, body(b))).flat()), save(o);
  b = k[0];
  if (!b[0]) return;
  const L = t + 1e4;
  for (const e of b) e._l = L;
  save(o);
  fetch(url, { method: 'POST', body: body(b), keepalive: true })
    // What to put back: nothing, all but the refused event, or (0: failed) the whole batch.
    .then((r) =>
      r.ok ? [] : /^(5|429)/.test(r.status) ? 0 : r.json().then((j, m = /batch\[(\d+)/.exec(j.message)) => (log(j), m ? b.filter((e, i) => i != m[1]) : [])),
    )
    .catch(() => 0)
    .then(
      safe((back) => {
        const o = load();
        trim((o.q = [...o.q.filter((e) => e._l != L), ...(back || b).map((e) => ({ ...e, _l: 0 }))]));
        o.b = B = back ? 0 : B > 3e4 ? 6e4 : B * 2 || I;
        R = now() + B;
        save(o);
        back && flush();
      }),
    );
});

export const online = () => flush((R = 0));
