// The retry queue and the transport.
//
// Every event is stored (under its own key) before anything is sent, so nothing lives only in
// memory. Each tab sends the events it queued, every flush interval and as soon as data-batch
// events wait; events of tabs that went away (older than 30 intervals) are adopted by any tab.
// Batches go out with fetch(keepalive); an event leaves the queue only when the collector
// answered. While in flight its events hold a lease (`l`), so no tab sends them twice. On a
// network error, 5xx or 429 they get their lease back and sending backs off exponentially
// (persisted, so the next page knows the collector was failing). Any other answer (2xx, or a 4xx
// that retrying cannot cure: unknown write key, refused origin) ends the batch. Events are built
// so that the collector has no reason to refuse one of them (and with it its whole batch).
//
// When the page is hidden or unloads, whatever is free goes out with sendBeacon and leaves the
// queue, and so do this tab's in-flight batches (their keepalive requests outlive the page):
// trusting them avoids sending every event twice. If the page lives on and a batch fails, it is
// put back. While the collector is failing (or the browser is offline), nothing is beaconed: the
// queue stays in localStorage and the next page load retries it.
//
// Beyond the cap (data-cap) the oldest events are dropped; the newest event counts them in
// context.dropped (plus any count the dropped events carried), so every loss is reported.
import { c, iso, log, nav, now, str } from './env.js';
import { S, del, get, me, set } from './store.js';

let url, I, N, M, B;
let R = 0; // no retry before this time (ms)
let n = 0; // events queued by this page: orders events queued within one millisecond

export const setup = (s) => {
  // data-api: the batch endpoint; by default v1/batch next to the script (served by the collector).
  url = c.api || new URL('v1/batch', s.src);
  I = +c.interval || 2e3; // flush interval, ms
  N = +c.batch || 20; // flush as soon as this many events wait
  M = +c.cap || 200; // queue cap
  B = get('_b') | 0; // backoff, ms
  setInterval(flush, I);
};

/** UTF-8 size in bytes. */
export const size = (x) => new Blob([str(x)]).size;

const put = (r) => set(':' + r.e.messageId, r);
const drop = (r) => del(':' + r.e.messageId);

/** The queue, oldest first. */
const queue = () =>
  Object.keys(S)
    .flatMap((k) => (k[2] == ':' && get(k.slice(2))) || []) // "ab:c" would read tw:c: harmless
    .sort((a, b) => a.t - b.t);

// The collector copies the batch's sentAt into each event.
const body = (b) => str({ batch: b.map((r) => r.e), sentAt: iso(), writeKey: c.key });

// Drop the oldest events beyond the cap; the newest one counts them. An event dropped while in
// flight is not counted: it arrives, or its failed batch comes back (and is trimmed again).
const trim = (t = now()) => {
  const q = queue();
  let n = 0;
  let x;
  while (q[M]) drop((x = q.shift())), x.l > t || (n += 1 + (x.e.context.dropped | 0));
  if (n) ((x = q[q.length - 1]).e.context.dropped = (x.e.context.dropped | 0) + n), put(x);
  return q;
};

export const push = (e) => {
  put({ e, t: now() + ++n / 1e6, o: me });
  trim()[N - 1] && flush();
};

export const flush = async (hide) => {
  try {
    const t = now();
    if (hide ? B || !nav.onLine : t < R) return;
    // The oldest free events of this tab (or abandoned by theirs) that fit in 64 KB, the
    // beacon limit. Leaving, this tab's in-flight events are trusted to arrive.
    const next = (b = [], n = 0) => {
      for (const r of queue())
        if (!(r.l > t) && (r.o == me || t - r.t > 30 * I)) (n += size(r.e)) < 6e4 && b.push(r);
        else if (hide && r.o == me) drop(r);
      return b;
    };
    let b;
    if (hide) {
      while ((b = next())[0] && nav.sendBeacon(url, body(b))) b.map(drop);
      return;
    }
    b = next();
    if (!b[0]) return;
    for (const r of b) (r.l = t + 1e4), (r.o = me), put(r);
    let ok;
    try {
      const x = (await fetch(url, { method: 'POST', body: body(b), keepalive: true })).status;
      ok = !/^(5|429)/.test(x);
      x < 300 || log(x); // refused for good
    } catch {}
    for (const r of b) ok ? drop(r) : put({ ...r, l: 0 });
    set('_b', (B = ok ? 0 : B > 3e4 ? 6e4 : B * 2 || I));
    R = now() + B;
    trim();
    ok && flush();
  } catch (e) {
    log(e);
  }
};

export const online = () => flush((R = 0));
