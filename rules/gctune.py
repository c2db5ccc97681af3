"""Garbage-collector policy for processes that hold large, long-lived engine state.

Why: the engine keeps one small automaton per (rule, key); these objects live
for a rule window (minutes to days) and never form reference cycles (plain
tuples, lists, dicts and slotted objects pointing "down" only), so reference
counting frees them. CPython's cyclic collector still scans every one of them
in its periodic full collections; with a million pending states that scan cost
about half of the matching time. So, once, after start-up:

* ``gc.freeze()`` moves everything alive now (modules, compiled rules, config)
  to the permanent generation: it is never scanned again;
* the young-generation threshold is raised, so short-lived per-event objects
  are mostly freed by reference counting before any collection looks at them
  and fewer of them get promoted, making full collections rarer.

Cyclic garbage is still collected (the collector stays enabled), only less
often. Contained: call :func:`relax_for_long_lived_state` from a process entry
point (the engine service, the backtest, the benchmark), never at import.
"""

from __future__ import annotations

import gc

__all__ = ["relax_for_long_lived_state"]

GEN0_THRESHOLD = 50_000  # default 700
GEN1_THRESHOLD = 20  # default 10
GEN2_THRESHOLD = 100  # default 10 (CPython also waits for 25% new long-lived objects)

_done = False


def relax_for_long_lived_state() -> None:
    """Apply the policy once per process (later calls do nothing)."""
    global _done
    if _done:
        return
    _done = True
    gc.collect()
    gc.freeze()
    t0, t1, t2 = gc.get_threshold()
    gc.set_threshold(max(t0, GEN0_THRESHOLD), max(t1, GEN1_THRESHOLD), max(t2, GEN2_THRESHOLD))
