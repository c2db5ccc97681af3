// Tripwire browser tracker. Loader (see README.md):
//   <script>window.tw=window.tw||function(){(tw.q=tw.q||[]).push(arguments)}</script>
//   <script async src="/t.js" data-key="WRITE_KEY"></script>
// API: tw('track', event, properties), tw('page', [name], [properties]), tw('identify', userId, traits),
// tw('reset'), tw('optOut'), tw('optIn'); tw('init', {...}) before the script loads sets options.
import { context, here, last, pageInfo, view } from './context.js';
import { c, d, iso, log, nav, now, on, safe, uuid } from './env.js';
import { flush, online, push, setup, size } from './send.js';
import { S, del, get, open, set } from './store.js';

const t = window.tw;

// Optional first-party cookie mirroring the anonymousId for the site's own server (data-cookie).
const cookie = (v, age) => on(c.cookie) && (d.cookie = 'tw_a=' + v + ';path=/;max-age=' + age);

if (!t?.l)
  safe(() => {
    const q = t?.q || [];
    const s = d.currentScript;
    Object.assign(c, s?.dataset, ...q.map((a) => a[0] == 'init' && a[1]));
    // Global Privacy Control or Do Not Track: do nothing at all (no storage, no requests; the
    // loader's stub keeps swallowing calls).
    if (!on(c.ignoreDnt) && (nav.globalPrivacyControl || nav.doNotTrack == 1)) return;
    const f = (window.tw = safe((m, ...a) => api[m](...a)));
    f.l = 1;
    open();
    setup(s);

    const ev = (type, x) => {
      if (get('_x')) return;
      // Ids and event names fit the collector's 256 characters: one bad event would sink its batch.
      if (x.userId != null) set('_u', (x.userId + '').slice(0, 256));
      const a = get('_a') || uuid();
      set('_a', a);
      cookie(a, 31536000);
      const e = { type, messageId: uuid(), anonymousId: a, timestamp: iso(), context: context(now()), ...x, userId: get('_u') };
      size(e) > 3e4 ? log(e) : push(e); // the collector refuses events over 32 KB
    };
    const page = (n, p) => {
      if (n + '' !== n) (p = n), (n = void 0); // page(properties)
      view();
      ev('page', { name: n, properties: { ...pageInfo(), ...p } });
    };
    const forget = (k) => {
      for (const x in S) k.test(x) && delete S[x];
      cookie('', 0);
    };
    const api = {
      track: (n, p) => ev('track', { event: (n + '').slice(0, 256), properties: { ...p } }),
      page,
      identify: (u, p) => ev('identify', typeof u == 'object' ? { traits: { ...u } } : { userId: u, traits: { ...p } }), // or identify(traits)
      reset: () => forget(/^tw_[aus]/),
      optOut: () => set('_x', 1, forget(/^tw[_:]/)),
      optIn: () => del('_x'),
    };

    for (const a of q) f(...a);
    page();

    // SPA page views: history API and back/forward (and hash changes with data-hash).
    const nv = safe(() => here() != last && page());
    for (const m of ['pushState', 'replaceState']) {
      const o = history[m];
      history[m] = (...a) => {
        o.apply(history, a);
        nv();
      };
    }
    addEventListener('popstate', nv);
    on(c.hash) && addEventListener('hashchange', nv);
    // Leaving, or going to the background (on mobile maybe the last chance): beacon.
    addEventListener('visibilitychange', () => d.hidden && flush(1));
    addEventListener('pagehide', () => flush(1));
    addEventListener('online', online);
  })();
