// Shared helpers. Every byte here ships to every visitor: keep it tiny.

export const d = document;
export const nav = navigator;
export const now = Date.now;
export const iso = () => new Date().toISOString();
export const str = JSON.stringify;

/** Settings: the script tag's data- attributes, then every queued tw('init', {...}). */
export const c = {};

/** A boolean setting: true for `data-x`, `data-x=""` or true; false when absent, false or "false". */
export const on = (v) => v != null && !/^f/.test(v);

export const log = (...a) => on(c.debug) && console.log('tw', ...a);

/** `f` that never throws into the host page (errors go to the debug log). */
export const safe = (f) => (...a) => {
  try {
    return f(...a);
  } catch (e) {
    log(e);
  }
};

/** 128 random bits (crypto.randomUUID would need a secure context). */
export const uuid = () => crypto.getRandomValues(new Uint32Array(4)).join('-');
