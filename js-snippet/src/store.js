// Persistence: localStorage, or a plain object in no-storage mode (data-memory) and when
// localStorage is unavailable or full. Values are JSON. Keys:
//   tw_a  anonymousId   tw_u  userId   tw_s  [session id = its start (ms), last activity (ms)]
//   tw_x  opted out     tw_b  backoff (ms; non-zero while the collector is failing)
//   tw:<messageId>  one queued event: {e: event, t: queued at (ms), o: owning tab, l: lease until (ms)}
// One key per event, because localStorage is only eventually consistent between tabs running in
// different processes: a shared array rewritten by several tabs loses events.
import { c, on, str, uuid } from './env.js';

export let S = {};
/** This tab's id: sessionStorage keeps it across reloads and navigations within the tab. */
export let me = 1;

export const open = () => {
  try {
    if (!on(c.memory)) (S = localStorage), (me = sessionStorage.tw ||= uuid());
  } catch {} // storage access throws in sandboxed frames: stay in memory
};

export const get = (k) => {
  try {
    return JSON.parse(S['tw' + k]);
  } catch {}
};

export const set = (k, v) => {
  v = str(v);
  try {
    S['tw' + k] = v;
  } catch {
    S = { ...S, ['tw' + k]: v }; // quota exceeded: carry on in memory
  }
};

export const del = (k) => {
  delete S['tw' + k];
};
