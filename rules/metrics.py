"""Prometheus metrics of the rules engine (default registry, exposed by the collector's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter("tripwire_rules_events", "Events read by the rules engine")
LATE = Counter("tripwire_rules_late_events", "Events older than the watermark (still matched, up to max lateness)")
TOO_LATE = Counter("tripwire_rules_too_late_events",
                   "Events older than [rules] max_lateness (not matched; they still reach the lake)", ["source"])
LATE_CANCELS = Counter("tripwire_rules_late_cancels",
                       "Events that would have cancelled an absence that had already fired (arrived after the grace)",
                       ["rule"])
OUT_OF_ORDER = Counter("tripwire_rules_out_of_order_events",
                       "Events older than a pending run of their own key by more than the allowed lateness "
                       "(matched against the state they found)")
RULE_ERRORS = Counter("tripwire_rules_rule_errors", "Exceptions raised by a rule (it is quarantined)", ["rule"])
REFUSED = Counter("tripwire_rules_pending_refused",
                  "Partial matches not started because the partition held [rules] max_pending states", ["rule"])
QUARANTINED = Gauge("tripwire_rules_quarantined", "Rules stopped by an error until their file changes")
DUPLICATES = Counter("tripwire_rules_duplicate_events", "Events whose messageId was already matched")
BUSY = Counter("tripwire_rules_busy_seconds",
               "Time spent handling batches, by phase: match (decode, match, advance timers), triggers (read matched "
               "events back, build trigger records), save (state, offsets and triggers made durable); the rest of "
               "the engine's time is reading the log and waiting for it", ["phase"])
TRIGGERS = Counter("tripwire_rules_triggers", "Triggers written to the triggers topic", ["rule"])
SUPPRESSED = Counter("tripwire_rules_suppressed", "Complete matches suppressed by `at most ... per`", ["rule"])
ERRORS = Counter("tripwire_rules_errors", "Events or rules that could not be evaluated (bad JSON, bad time, ...)")
RELOAD_ERRORS = Counter("tripwire_rules_reload_errors",
                        "Rule files that failed to compile on (re)load, or whose rule's name another file uses", ["file"])
BROKEN_FILES = Gauge("tripwire_rules_broken_files",
                     "Rule files currently rejected (their previous version runs) or holding a rule that does not "
                     "run (its name is used by an earlier file)")
RULES = Gauge("tripwire_rules_loaded", "Rules currently running")
PENDING = Gauge("tripwire_rules_pending_states", "(rule, key) states held in memory")
WATERMARK_LAG = Gauge("tripwire_rules_watermark_lag_seconds", "Wall clock minus the lowest partition watermark")
