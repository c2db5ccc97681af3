// The context every event carries, and page view bookkeeping.
import { c, d, nav, on } from './env.js';
import { get, set } from './store.js';

const L = location;
let ref = d.referrer;
/** The URL of the last page view (without the hash unless hash routing is on). */
export let last;

export const here = () => (on(c.hash) ? L.href : L.href.split('#')[0]);

/** A page view happens: after an SPA navigation the previous page is the referrer. */
export const view = () => {
  const h = here();
  if (last && h != last) ref = last;
  last = h;
};

export const pageInfo = () => ({ url: L.href, path: L.pathname, referrer: ref, title: d.title, search: L.search });

/** Context for an event at time t. */
export const context = (t) => {
  const x = { page: pageInfo(), library: { name: 'tripwire.js', version: VERSION }, locale: nav.language };
  let s = get('_s');
  // A session ends after 30 minutes without events; its id is its start time (ms).
  if (!(t - s?.[1] < 18e5)) s = [t];
  set('_s', [(x.sessionId = s[0]), t]);
  for (let [k, v] of new URLSearchParams(L.search))
    if (/^utm_/.test(k)) (x.campaign ||= {})[(k = k.slice(4)) == 'campaign' ? 'name' : k] = v;
  return x;
};
