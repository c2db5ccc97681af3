// Persistence: one JSON object under localStorage.tw, or in memory in no-storage mode
// (data-memory) and when localStorage is unavailable or full. Every change is a synchronous
// read-modify-write, so tabs sharing the storage do not overwrite each other's changes.
//   q  retry queue (events; `_l` = in-flight lease: expiry time, also naming the request)
//   a  anonymousId   u  userId   s  session id (its start, ms)   t  last activity (ms)
//   o  opted out     b  backoff (ms; non-zero while the collector is failing)
// With data-cookie the anonymousId is mirrored in a first-party cookie `tw_a` (for the site's
// own server); it goes away with reset() and optOut().
import { c, d, on, str } from './env.js';

let S = {};

export const open = () => {
  try {
    S = on(c.memory) ? S : localStorage;
  } catch {} // localStorage access throws in sandboxed frames
};

export const load = () => {
  let o;
  try {
    o = JSON.parse(S.tw);
  } catch {}
  return { q: [], ...o };
};

export const save = (o) => {
  if (on(c.cookie)) d.cookie = 'tw_a=' + (o.a || '') + ';path=/;max-age=' + (o.a ? 31536000 : 0);
  o = str(o);
  try {
    S.tw = o;
  } catch {
    S = { tw: o }; // quota exceeded or storage disabled: carry on in memory
  }
};
