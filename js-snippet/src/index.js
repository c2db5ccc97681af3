// Tripwire browser tracker (see README.md). Loader:
//   <script>window.tw=window.tw||function(){(tw.q=tw.q||[]).push(arguments)}</script>
//   <script async src="/t.js" data-key="WRITE_KEY"></script>
// API: tw('track', event, properties), tw('page', [name], [properties]), tw('identify', userId, traits),
// tw('identify', traits), tw('reset'), tw('optOut'), tw('optIn'); tw('init', {...}) before the
// script loads sets options.
//
// Every byte here ships to every visitor, and the budget is gzip -9 of the built file: the code is
// one closure written for the minifiers and for gzip (short helpers, the same shapes repeated).
// Where order does not matter (the top-level declarations, the fields of the objects built, the
// statements of a few independent steps, the API methods, the listeners), it is the order that a
// search over permutations found smallest after gzip -9 (zlib, as GNU gzip and test_build.py
// measure): 24 bytes less than the reading order.
//
// Storage (localStorage, or a plain object in no-storage mode, when localStorage is unavailable or
// full); values are JSON:
//   tw_i  the visitor: {a: anonymousId, u: userId, s: session id = its start (ms), l: last event (ms)}
//   tw_x  opted out    tw_b  backoff (ms; only while the collector is failing)
//   tw:<messageId>  one queued event: {e: event, t: queued at (ms), o: owning tab, l: lease until (ms)}
// One key per event, because localStorage is only eventually consistent between tabs running in
// different processes: a shared array rewritten by several tabs loses events. The tab's id is kept
// in sessionStorage, so it survives reloads and navigations within the tab.
//
// Delivery. Every event is stored before anything is sent. Each tab sends the events it queued,
// every flush interval and as soon as data-batch events wait; events of tabs that went away (queued
// more than 30 intervals ago) are adopted by any tab. Batches go out with fetch(keepalive); an
// event leaves the queue only when the collector answered. While in flight its events hold a lease
// (`l`), so no tab sends them twice. On a network error, 5xx or 429 they get their lease back and
// sending backs off exponentially (persisted, so the next page knows the collector was failing).
// Any other answer (2xx, or a 4xx that retrying cannot cure: unknown write key, refused origin)
// ends the batch; the collector lets a page on any origin read those two refusals, which the
// browser would otherwise report as a network error. The first refusal on a page is one console
// warning with the collector's answer (it names the reason). Events are built so that the
// collector has no reason to refuse one of them (and with it its whole batch): names and ids cut
// to 256 characters, properties always objects, no event over 30 KB.
//
// When the page is hidden or unloads, whatever is free goes out with sendBeacon (in bodies under
// 64 KB) and leaves the queue, and so do this tab's in-flight batches (their keepalive requests
// outlive the page): trusting them avoids sending every event twice. If the page lives on and a
// batch fails, it is put back. While the collector is failing (or the browser is offline), nothing
// is beaconed: the queue stays in localStorage and the next page load retries it.
//
// Beyond the cap (data-cap) the oldest events are dropped; the newest event counts them in
// context.dropped (plus any count the dropped events carried), so every loss is reported. An
// event dropped while in flight is not counted: it arrives, or its failed batch comes back (and
// is trimmed again at the next flush).

/** Settings: the script tag's data- attributes, then every queued tw('init', {...}). */
const c = {};
const L = location;
const nav = navigator;
let B; // backoff, ms
const now = Date.now;
let I; // flush interval, ms
let url; // the batch endpoint
let R; // no retry before this time (ms)
let me = 1; // this tab's id
const d = document;
let last; // the URL of the last page view (without the hash unless hash routing is on)
let S = {}; // the store
const str = JSON.stringify;
let n = 0; // events queued by this page: orders events queued within one millisecond
let ref = d.referrer; // the referrer of the next page view
let W = 0; // the warning of a refusal, once shown (a promise)

/** A random id (about 100 bits; crypto.randomUUID would need a secure context). */
const uuid = () => (Math.random() + '' + Math.random()).slice(2);

const pageInfo = () => ({ path: L.pathname, url: L.href, title: d.title, search: L.search, referrer: ref });
/** Send a batch (the oldest free events of this tab, or abandoned by theirs, that fit in 64 KB), then the
 * next; only when at least `m` events are ready (data-batch, for a flush after an event). The queue is
 * trimmed to the cap on every call, even when nothing is sent. */
const flush = async (hide, m = 1, t = now(), b = [], n = 0, ok, x, q = []) => {
  try {
    // The queue, newest first, trimmed to the cap: the newest event counts what was dropped.
    for (x in S) /^tw:/.test(x) && (x = get(x)) && q.push(x);
    for (x of q.sort((a, b) => b.t - a.t).splice(c.cap || 200))
      drop(x), x.l > t || put(q[0], ((ok = q[0].e.context).dropped = ~~ok.dropped - ~x.e.context.dropped)); // + 1 + its own count
    if (hide ? B || !nav.onLine : t < R) return;
    for (const r of q.reverse()) // oldest first
      r.l > t
        ? hide && r.o == me && drop(r) // leaving: this tab's in-flight events are trusted to arrive
        : (r.o == me || t - r.t > 30 * I) && (n += size(r.e)) < 6e4 && b.push(r);
    if (!b[m - 1]) return;
    // One path for both: the batch is leased, sent, then dropped (accepted) or put back (a
    // failed fetch, or a beacon the browser refused, which also backs off).
    b.map((r) => put(r, (r.l = t + 1e4), (r.o = me)));
    n = str({ batch: b.map((r) => r.e), sentAt: new Date().toISOString(), writeKey: c.key }); // the collector copies sentAt into each event
    ok = hide
      ? nav.sendBeacon(url, n)
      : await fetch(url, { method: 'POST', keepalive: 1, body: n }).then(
          // A refusal (a 4xx but 429) ends the batch, with one warning per page naming the reason
          // (`, 1`: the promise W returned here would be awaited, and resolve to undefined).
          (r) => (x = r.status) < 300 || (x < 500 && x != 429 ? (W ||= r.text().then((t) => console.warn('tw refused', x, t), log), 1) : log(x)),
          log,
        );
    // (Cleared rather than set to 0: nothing is written after an optOut that a batch outlived.)
    (B = ok ? 0 : B > 3e4 ? 6e4 : B * 2 || I) ? set('tw_b', B) : del('tw_b');
    R = t + B;
    b.map(ok ? drop : (r) => put(r, (r.l = 0)));
    ok && flush(hide);
  } catch (e) {
    log(e);
  }
};

/** A stored value: a missing key reads as 0; a corrupt one (another script wrote it) is removed. */
const get = (k) => {
  try {
    return JSON.parse(S[k] || 0);
  } catch {
    del(k);
  }
};
const set = (k, v) => {
  v = str(v);
  try {
    S[k] = v;
  } catch {
    S = { ...S, [k]: v }; // quota exceeded: carry on in memory
  }
};
/** A boolean setting: true for `data-x`, `data-x=""`, true or anything else but false/"false" or absent. */
const on = (v) => !/^[fu]/.test(v);
const drop = (r) => del('tw:' + r.e.messageId);

const log = (e) => on(c.debug) && console.log('tw', e);
const put = (r) => set('tw:' + r.e.messageId, r);
const here = () => (on(c.hash) ? L.href : L.href.split('#')[0]);
/** UTF-8 size in bytes. */
const size = (x) => new Blob([str(x)]).size;

const del = (k) => delete S[k];

// Nothing ever throws into the host page: the set-up and every call catch (errors go to the debug log).
// Global Privacy Control or Do Not Track: do nothing at all (no storage, no requests; the loader's
// stub keeps swallowing calls).
if (!window.tw?.l)
  try {
    const q = window.tw?.q || [];
    Object.assign(c, d.currentScript?.dataset, ...q.map((a) => a[0] == 'init' && a[1]));
    if (on(c.ignoreDnt) || !(nav.globalPrivacyControl || nav.doNotTrack == 1)) {
      // Every method takes at most two arguments, so page and identify have an always-undefined
      // fourth parameter to clear the name with.
      const f = (window.tw = (m, n, p) => {
        try {
          api[m](m, n, p); // the method's name is the event's type
        } catch (e) {
          log(e);
        }
      });
      f.l = 1;
      try {
        if (!on(c.memory)) (S = localStorage), (me = sessionStorage.tw ||= uuid());
      } catch {} // storage access throws in sandboxed frames: stay in memory
      I = +c.interval || 2e3;
      B = get('tw_b'); // undefined if corrupt: treated as 0 everywhere
      // data-api: the batch endpoint; by default v1/batch next to the script (served by the collector).
      url = c.api || new URL('v1/batch', d.currentScript.src);
      setInterval(flush, I);

      const ev = (type, x) => {
        if (get('tw_x')) return;
        const t = now();
        const i = get('tw_i') || {};
        // A session ends after 30 minutes without events; its id is its start time (ms).
        if (!(t - i.l < 18e5)) i.s = t;
        i.a ||= uuid();
        if (x.userId) i.u = (x.userId + '').slice(0, 256);
        i.l = t;
        set('tw_i', i);
        let campaign; // UTM parameters (utm_campaign becomes name)
        for (let [k, v] of new URLSearchParams(L.search))
          if (/^utm_/.test(k)) (campaign ||= {})[(k = k.slice(4)) == 'campaign' ? 'name' : k] = v;
        on(c.cookie) && (d.cookie = 'tw_a=' + i.a + ';path=/;max-age=' + 3e7); // 347 days, renewed by every event
        const e = {
          type,
          messageId: uuid(),
          timestamp: new Date().toISOString(),
          context: { sessionId: i.s, locale: nav.language, library: { name: 'tripwire.js', version: VERSION }, page: pageInfo(), campaign },
          anonymousId: i.a,
          ...x,
          userId: i.u,
        };
        if (size(e) > 3e4) return log(e); // the collector refuses events over 32 KB
        put({ o: me, t: t + ++n / 1e3, e }); // (1e-6 would vanish: an ms timestamp has no room left)
        flush(0, c.batch || 20); // sends only once data-batch events wait
      };
      const forget = (k) => {
        for (const x in S) k.test(x) && del(x);
        on(c.cookie) && (d.cookie = 'tw_a=;path=/;max-age=0');
      };
      const api = {
        reset: () => forget(/^tw_i/),
        optIn: () => del('tw_x'),
        track: (m, n, p) => ev(m, { event: (n + '').slice(0, 256), properties: { ...p } }),
        optOut: () => set('tw_x', 1, forget(/^tw[_:]/)),
        identify: (m, u, p, n) => {
          if (typeof u == 'object') (p = u), (u = n); // identify(traits) keeps the user
          ev(m, { userId: u, traits: { ...p } });
        },
        page: (m, n, p, u) => {
          if (n + '' !== n) (p = n), (n = u); // page(properties)
          // After an SPA navigation the previous page view is the referrer.
          ref = last || ref;
          last = here();
          ev(m, { name: n, properties: { ...pageInfo(), ...p } });
        },
      };

      // Replay the calls queued before the script loaded, then record the page view.
      q.map((a) => f(...a)), f('page');

      // SPA page views: history API, back/forward and hash changes (page views with data-hash only:
      // `here` ignores the hash otherwise).
      const nv = () => here() != last && f('page');
      addEventListener('pagehide', () => flush(1));
      // Leaving, or going to the background (on mobile maybe the last chance): beacon.
      addEventListener('visibilitychange', () => flush(d.hidden)); // visible again: an ordinary flush
      addEventListener('hashchange', nv);
      addEventListener('popstate', nv);
      addEventListener('online', () => flush((R = 0)));
      for (const m of ['pushState', 'replaceState']) {
        const o = history[m];
        history[m] = (...a) => {
          o.apply(history, a);
          nv();
        };
      }
    }
  } catch (e) {
    log(e);
  }
