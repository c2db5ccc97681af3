"""Per-partition matcher state and its timers: what the engine keeps between events.

Owns the records the matcher produces and holds (:class:`Match`,
:class:`EngineStats`, :class:`Run`, :class:`RuleState`), the state of one log
partition (:class:`PartitionState`) and the timer bookkeeping that the engine
mixes in (:class:`PartitionTimers`): registering wakes, firing them when the
watermark passes (absences, window and cooldown expiry) and forgetting
messageIds past the dedup horizon. The matching of events against steps lives
in :mod:`rules.matching`; :class:`rules.engine.Engine` combines both.

Layout, chosen for the hot path and for memory: per partition, one dict per
rule uid mapping key -> :class:`RuleState`, or, for "A then B within T" rules
without a cap, the compact form of the one run that can wait there: the flat
tuple ``(messageId, *projection)`` of its A, the messageId as the duplicate memory holds
it (:func:`rules.codec.compact_mid`: a UUID's 128-bit int) (its deadline follows
from the time; it is saved in the general form). Its time and offset are not in the
tuple: they are in the partition's duplicate memory ``seen``, which maps the messageId to
``time << 94 | fingerprint << 64 | offset`` (:func:`pack`; offsets are Kafka/SQLite offsets,
0 <= offset < 2**64; the fingerprint tells the event's source and key apart, see
:func:`rules.codec.key_fp`) and keeps it as long as the state can live (the *recent* span:
the longest rule window plus the grace and the lateness), so a pending state costs no int
of its own. Older ids move to :class:`rules.dedup.OldIds`.

Time. A state's timer is due when event time passes its deadline (``deadline + 1``, the
*due* time). Two things decide it: the key's own next event (an event at ``t`` first
expires what ``t`` has passed, firing absences, exactly as a backtest would: see
``Matcher._catch_up``), and the watermark, which fires a timer only once it has passed the
due time plus the *grace*, so stragglers of the key (SDK batches, an offline queue) still
arrive before anything is decided for it. A timer whose due time plus the grace the
watermark has already passed when it is registered (a late or replayed event started it)
is put at the watermark plus the grace instead: nothing is decided sooner than the grace
after the engine read the event (:meth:`PartitionState.wheel_time`).

Timers are a heap of distinct wheel times plus, per wheel time, a list of the keys
registered then, grouped by rule. A state registers its earliest wake only; when that
comes due the state is looked at and registers its real wake (so updates that push a
deadline later cost nothing). A wake's list is grouped by rule:
``[(uid,), key, key, (uid2,), key, ...]``; consecutive registrations of one rule at one
wake (many events in the same millisecond) cost one key reference each.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .codec import FP_MASK, TIME_SHIFT, mid_text
from .dedup import OldIds, id_hash
from .plan import Plan, RulePlan, Slim

__all__ = ["FP_MASK", "NEG_INF", "OFFSET_MASK", "TIME_SHIFT", "EngineStats", "Match", "PartitionState", "PartitionTimers",
           "RuleState", "Run", "compact_time", "pack", "slim_of"]

NEG_INF = -(2**62)
_SEEN_SWEEP_MIN_MS = 1000
_FIRED_KEPT = 10_000  # absences fired per partition remembered to count late cancels
_heappush, _heappop = heapq.heappush, heapq.heappop
OFFSET_MASK = (1 << 64) - 1


def pack(t: int, offset: int, fp: int = 0) -> int:
    """Event time, source/key fingerprint and log offset as one int, ordered by time: the values of
    ``seen`` (compact states read their first event's time and offset there). The per-event loop
    inlines it."""
    return t << TIME_SHIFT | fp << 64 | offset

class Match(NamedTuple):
    rule: RulePlan
    key: str
    events: tuple[Slim, ...]  # flattened, in match order
    fired_at_ms: int
    payload: Any
    partition: int
    identity: tuple[str | None, str | None, str | None] = (None, None, None)  # rules.identity.identity_of

    @property
    def message_ids(self) -> list[str]:
        return [e[0] for e in self.events]


@dataclass
class EngineStats:
    events: int = 0
    late: int = 0  # behind the watermark, still matched
    too_late: int = 0  # older than max lateness (or than the duplicate memory): not matched
    duplicates: int = 0
    matches: int = 0
    suppressed: int = 0
    errors: int = 0
    out_of_order: int = 0  # older than a pending run of its key by more than the lateness
    late_cancels: int = 0  # would have cancelled an absence that had fired
    forgotten: int = 0  # keys whose state an erasure (tripwire lake forget) dropped


class Run:
    """A partial match waiting at one step."""

    __slots__ = ("steps", "anchor", "deadline", "acc")

    def __init__(self, steps: tuple[Any, ...], anchor: int, deadline: int, acc: tuple[Slim, ...] | None = None):
        self.steps = steps  # per matched step: a Slim, or a tuple of Slims for a count step
        self.anchor = anchor  # event time of the last matched event
        self.deadline = deadline  # anchor + the waiting step's within
        self.acc = acc  # events counted so far when the waiting step is a count


class RuleState:
    __slots__ = ("runs", "acc", "fires", "wake")

    def __init__(self, n_steps: int) -> None:
        self.runs: list[Run | None] | None = [None] * n_steps if n_steps > 1 else None
        self.acc: list[Slim] | None = None  # count step 0: counted events, time order
        self.fires: list[int] | None = None  # fire times inside the cap window
        self.wake = 0  # earliest registered timer (0: none)

    def empty(self) -> bool:
        return not self.acc and not self.fires and (self.runs is None or not any(self.runs))


class PartitionState:
    __slots__ = ("partition", "grace", "max_t", "watermark", "rules", "follow", "timers", "wheel", "registered", "seen",
                 "next_sweep", "dirty", "new_seen", "seen_cutoff", "last_wake", "last_uid", "marks", "old", "seen_floor",
                 "fired", "identity")

    def __init__(self, partition: int, grace: int = 0) -> None:
        self.partition = partition
        self.grace = grace
        self.max_t = NEG_INF
        self.watermark = NEG_INF
        self.rules: dict[str, dict[str, RuleState]] = {}  # rule uid -> key -> state (one dict per rule, kept)
        self.follow: dict[str, tuple[Any, ...]] = {}  # event name -> (states of the rule, rule, steps, by_anon)
        self.timers: list[int] = []  # heap of the distinct wake times in ``wheel``
        self.wheel: dict[int, list[Any]] = {}  # wake time -> [(uid,), key, key, (uid2,), key, ...] registered then
        self.registered = 0  # registrations in ``wheel`` (live or superseded)
        # messageId (codec.compact_mid; (that, fingerprint) when another source/key sent the same id first)
        # -> pack(event time, offset, fingerprint)
        self.seen: dict[Any, int] = {}
        self.next_sweep = NEG_INF
        self.dirty: set[tuple[str, str]] = set()  # changed since the last take_changes()
        self.new_seen: list[tuple[str, int, int]] = []  # (messageId, event time, fingerprint)
        self.seen_cutoff: int | None = None
        self.old = OldIds()  # ids older than seen_floor
        self.seen_floor = NEG_INF  # seen holds every id of an event at or after this time
        # key -> rule uid -> (steps, anchor, deadline) of the absences that fired (to count late cancels)
        self.fired: OrderedDict[str, dict[str, tuple[Any, int, int]]] = OrderedDict()
        self.last_wake, self.last_uid = 0, ""  # the latest registration: its group is the tail of that wake's list
        self.identity: dict[str, Any] = {}  # key -> (userId, anonymousId, trust) last read (rules.identity)
        self.marks: dict[str, tuple[str]] = {}  # uid -> (uid,): the group marker in wheel lists

    @property
    def states(self) -> dict[tuple[str, str], Any]:
        """Every (rule uid, key) state (a copy; for inspection and snapshots)."""
        return {(uid, key): rs for uid, per in self.rules.items() for key, rs in per.items()}

    def wheel_time(self, due: int) -> int:
        """When the watermark may fire a timer due (in event time) at ``due``: after the grace, and never
        sooner than the grace after now (a late or replayed event's state waits for its stragglers too)."""
        w = due + self.grace
        return w if w > self.watermark else self.watermark + 1 + self.grace

    def register(self, wake: int, uid: str, key: str) -> None:
        self.registered += 1
        lst = self.wheel.get(wake)
        if lst is None:
            self.wheel[wake] = [self.marks.get(uid) or self.mark(uid), key]
            _heappush(self.timers, wake)
        elif wake == self.last_wake and uid == self.last_uid:
            lst.append(key)  # same rule and wake as the registration before: same group
        else:
            lst += (self.marks.get(uid) or self.mark(uid), key)
        self.last_wake, self.last_uid = wake, uid

    def mark(self, uid: str) -> tuple[str]:
        m = self.marks.get(uid)
        if m is None:
            m = self.marks[uid] = (uid,)
        return m

    def reset_wheel(self, wheel: dict[int, list[Any]], registered: int) -> None:
        """Replace the registrations, in place (a watermark advance in progress holds these objects)."""
        self.wheel.clear()
        self.wheel.update(wheel)
        self.timers[:] = wheel
        heapq.heapify(self.timers)
        self.registered, self.last_wake = registered, 0


def wheel_entries(flat: list[Any]) -> Any:
    """(uid, key) of each registration in a wake's list."""
    uid = ""
    for x in flat:
        if type(x) is tuple:
            uid = x[0]
        else:
            yield uid, x


def _uid_key(m: Match) -> tuple[str, str]:
    return m.rule.uid, m.key


def slim_of(c: tuple[Any, ...], ps: PartitionState) -> Slim:
    """The Slim a compact state ``(compact messageId, *projection)`` of partition ``ps`` stands for."""
    tp = ps.seen[c[0]]
    return (mid_text(c[0]), tp >> TIME_SHIFT, ps.partition, tp & OFFSET_MASK, c[1:])


def compact_time(c: tuple[Any, ...], ps: PartitionState) -> int:
    """Event time of the first event a compact state holds."""
    return ps.seen[c[0]] >> TIME_SHIFT  # type: ignore[no-any-return]


def remember_fired(ps: PartitionState, uid: str, key: str, steps: Any, anchor: int, deadline: int) -> None:
    """An absence fired: kept a while (bounded) so a cancel that arrives after it is counted."""
    fired = ps.fired
    per = fired.get(key)
    if per is None:
        per = fired[key] = {}
        if len(fired) > _FIRED_KEPT:
            fired.popitem(last=False)  # O(1), where deleting a plain dict's first key rescans the deleted slots
    else:
        fired.move_to_end(key)
    per[uid] = (steps, anchor, deadline)


class PartitionTimers:
    """Timer bookkeeping of :class:`rules.engine.Engine` (a mixin: methods only, the engine holds the data)."""

    plan: Plan
    _rules: dict[str, RulePlan]
    _compact: dict[str, int]  # uid of a compact rule -> its step 2's within
    _counts: dict[str, int]  # uid of a one-step count rule (state: its list of counted events) -> within
    track_dirty: bool
    dedup_window_ms: int
    dedup_max_ids: int
    recent_ms: int
    stats: EngineStats

    if TYPE_CHECKING:  # provided by the engine and by rules.matching.Matcher
        def pending(self, partition: int | None = None) -> int: ...

        def _complete(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState | None,
                      matched: tuple[Any, ...], t: int, out: list[Match]) -> None: ...

    def _reschedule(self, ps: PartitionState, rule: RulePlan, per: dict[str, RuleState], key: str,
                    rs: RuleState) -> None:
        wake = 0
        runs = rs.runs
        if runs is not None:
            for run in runs:
                if run is not None and (wake == 0 or run.deadline < wake):
                    wake = run.deadline
            if wake:
                wake += 1
        acc = rs.acc
        if acc:
            w = acc[0][1] + (rule.steps[0].within_ms or 0) + 1
            if wake == 0 or w < wake:
                wake = w
        fires = rs.fires
        if fires and rule.cap_per_ms is not None:
            w = min(fires) + rule.cap_per_ms + 1
            if wake == 0 or w < wake:
                wake = w
        if wake == 0:
            if rs.empty():
                del per[key]
            rs.wake = 0
            return
        wake = ps.wheel_time(wake)
        # Registered lazily: a state keeps its earliest registration; when that one comes due the
        # state is looked at again and registers its real wake.
        if rs.wake == 0 or wake < rs.wake:
            rs.wake = wake
            ps.register(wake, rule.uid, key)
            if ps.registered > 65_536 and ps.registered & 4095 == 0:
                self._maybe_rebuild_timers(ps)

    def _maybe_rebuild_timers(self, ps: PartitionState) -> None:
        """Drop superseded registrations when they outnumber the live states."""
        live = self.pending(ps.partition)
        if ps.registered <= 2 * live + 4096:
            return
        wheel: dict[int, list[Any]] = {}
        tail: dict[int, tuple[str]] = {}  # wake -> marker of its list's last group
        for uid, per in ps.rules.items():
            mark = ps.mark(uid)
            for key, rs in per.items():
                wake = self._wake_of(ps, uid, rs)
                if wake:
                    lst = wheel.get(wake)
                    if lst is None:
                        wheel[wake] = [mark, key]
                    elif tail[wake] is mark:
                        lst.append(key)
                    else:
                        lst += (mark, key)
                    tail[wake] = mark
        ps.reset_wheel(wheel, live)

    def _advance(self, ps: PartitionState, wm: int, out: list[Match]) -> None:
        """Move the watermark to ``wm``: fire the timers it passed. A state is looked at as of event time
        ``wm - grace``: what its key could still receive is not older than that."""
        ps.watermark = wm
        now = wm - ps.grace
        timers, wheel, prules, seen, grace = ps.timers, ps.wheel, ps.rules, ps.seen, ps.grace
        rules_get, track, compact, counts = self._rules.get, self.track_dirty, self._compact, self._counts
        while timers and timers[0] <= wm:
            wake = _heappop(timers)
            flat = wheel.pop(wake)
            if wake == ps.last_wake:
                ps.last_wake = 0
            first_out = len(out)
            uid, per = "", None
            for key in flat:
                if type(key) is tuple:
                    uid = key[0]
                    per = prules.get(uid)
                    continue
                ps.registered -= 1
                if per is None:
                    continue
                rs = per.get(key)
                if rs is None:
                    continue
                if type(rs) is tuple:
                    tp = seen.get(rs[0])
                    if tp is None:  # cannot happen while ``recent_ms`` outlives every compact state; never crash
                        del per[key]
                        self.stats.errors += 1
                        continue
                    due = (tp >> TIME_SHIFT) + compact[uid] + 1  # type: ignore[index]
                    if due + grace > wake:
                        ps.register(due + grace, uid, key)  # replaced by a later run: wake it then
                        continue
                    del per[key]
                    if track:
                        ps.dirty.add((uid, key))
                    rule = rules_get(uid)
                    if rule is not None and rule.steps[1].absent:
                        first = slim_of(rs, ps)
                        remember_fired(ps, uid, key, (first,), first[1], due - 1)
                        self._complete(ps, rule, key, None, (first,), due - 1, out)
                    continue
                if type(rs) is list:  # a one-step count's events (time order)
                    within = counts[uid]
                    due = rs[0][1] + within + 1
                    if due + grace > wake:
                        ps.register(due + grace, uid, key)  # its first events were counted since: wake then
                        continue
                    cutoff = now - within  # only memory: an event this old can never be counted again
                    i = 0
                    while i < len(rs) and rs[i][1] < cutoff:
                        i += 1
                    if track:
                        ps.dirty.add((uid, key))
                    if i == len(rs):
                        del per[key]
                        continue
                    del rs[:i]
                    ps.register(ps.wheel_time(rs[0][1] + within + 1), uid, key)
                    continue
                if rs.wake != wake:
                    continue  # superseded registration
                rule = rules_get(uid)
                if rule is None:
                    del per[key]
                    if track:
                        ps.dirty.add((uid, key))
                    continue
                rs.wake = 0
                if rs.fires is None and rs.runs is None:
                    acc = rs.acc
                    if acc and acc[-1][1] < now - rule.steps[0].within_ms:  # type: ignore[operator]
                        del per[key]  # a count whose whole window passed: the common end of a state
                        if track:
                            ps.dirty.add((uid, key))
                        continue
                if self._expire(ps, rule, key, rs, now, out) and track:
                    ps.dirty.add((uid, key))
                self._reschedule(ps, rule, per, key, rs)
            if len(out) - first_out > 1:
                # Timers due at one time fire in (rule uid, key) order; each entry fires at most once
                # and entries do not affect one another, so sorting what they fired is the same.
                out[first_out:] = sorted(out[first_out:], key=_uid_key)
        if wm >= ps.next_sweep:
            self._sweep_seen(ps, wm)

    def _sweep_seen(self, ps: PartitionState, wm: int) -> None:
        """Move ids older than the recent span from ``seen`` to the long memory; expire that memory."""
        recent = self.recent_ms
        cutoff = wm - recent
        if ps.seen and cutoff > ps.seen_floor:
            packed_cutoff = cutoff << TIME_SHIFT  # seen holds pack(t, offset, fp): ordered by t
            keep: dict[Any, int] = {}
            old = []
            for m, tp in ps.seen.items():
                if tp >= packed_cutoff:
                    keep[m] = tp
                else:
                    old.append((tp >> TIME_SHIFT, id_hash(m, (tp >> 64) & FP_MASK)))
            ps.seen = keep
            if old and self.dedup_window_ms > recent:
                ps.old.add(old)
        ps.seen_floor = max(ps.seen_floor, cutoff)
        ps.old.expire(wm - self.dedup_window_ms, self.dedup_max_ids)
        if self.track_dirty:
            ps.seen_cutoff = cutoff
        ps.next_sweep = wm + max(_SEEN_SWEEP_MIN_MS, recent // 8)

    def _expire(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState, wm: int, out: list[Match]) -> bool:
        """Drop what the watermark ``wm`` has passed (firing absences); True when anything changed."""
        changed = False
        if rs.runs is not None:
            for i, run in enumerate(rs.runs):
                if run is not None and run.deadline < wm:
                    rs.runs[i] = None
                    changed = True
                    if rule.steps[i].absent:
                        remember_fired(ps, rule.uid, key, run.steps, run.anchor, run.deadline)
                        self._complete(ps, rule, key, rs, run.steps, run.deadline, out)
        if rs.acc:
            cutoff = wm - (rule.steps[0].within_ms or 0)
            if rs.acc[0][1] < cutoff:
                rs.acc = [s for s in rs.acc if s[1] >= cutoff] or None
                changed = True
        if rs.fires and rule.cap_per_ms is not None:
            per = rule.cap_per_ms
            if min(rs.fires) + per <= wm:
                rs.fires = [f for f in rs.fires if f + per > wm] or None
                changed = True
        return changed

    def _wake_of(self, ps: PartitionState, uid: str, rs: Any) -> int:
        """The wheel time a state should be registered at now."""
        if type(rs) is tuple:
            return ps.wheel_time(compact_time(rs, ps) + self._compact.get(uid, 0) + 1)
        if type(rs) is list:
            return ps.wheel_time(rs[0][1] + self._counts.get(uid, 0) + 1)
        return rs.wake  # type: ignore[no-any-return]

    def _due_of(self, ps: PartitionState, uid: str, rs: Any) -> int:
        """Event time at which a compact or count-list state's timer is due (``deadline + 1``)."""
        if type(rs) is tuple:
            return compact_time(rs, ps) + self._compact.get(uid, 0) + 1
        return rs[0][1] + self._counts.get(uid, 0) + 1  # type: ignore[no-any-return]
