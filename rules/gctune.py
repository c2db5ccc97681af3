"""Garbage-collector policy for processes that hold large, long-lived engine state.

Why: the engine keeps one small automaton per (rule, key); these objects live
for a rule window (minutes to days) and never form reference cycles (plain
tuples, lists, dicts and slotted objects pointing "down" only), so reference
counting frees them. CPython's cyclic collector still scans every one of them
in its periodic full collections; with a million pending states that scan cost
about half of the matching time. So, once, after start-up:

* ``gc.freeze()`` moves everything alive now (modules, compiled rules, config)
  to the permanent generation: it is never scanned again;
* the young-generation threshold is raised to a million net new tracked
  objects. Engine states live for a rule window (10 minutes of events is tens
  of thousands of events); a young collection every 50,000 objects caught most
  of them alive, traversed them and promoted them (to be traversed again),
  which cost ~17% of matching time in ``bench/rules.py`` (4.4 s of GC per
  million events). With a million, most states have died by reference
  counting before a collection looks at them: 0.6 s per million events. A
  young collection then takes ~0.3 s, but happens every few hundred thousand
  events instead of ~40 ms every ten thousand.

Cyclic garbage is still collected (the collector stays enabled), only less
often. Contained: call :func:`relax_for_long_lived_state` from a process entry
point (the engine service, the backtest, the benchmark), never at import.
"""

from __future__ import annotations

import gc

__all__ = ["relax_for_long_lived_state"]

GEN0_THRESHOLD = 1_000_000  # default 700
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
