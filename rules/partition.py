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
``time << 64 | offset`` (:func:`pack`; offsets are Kafka/SQLite offsets, 0 <= offset <
2**64) and keeps it at least as long as the state can live (its horizon is the longest
rule window, or longer), so a pending state costs no int of its own. Timers are a heap of distinct wake
times plus, per wake time, a list of the keys registered then, grouped by rule. A state
registers its earliest wake only; when that comes due the state is looked at
and registers its real wake (so updates that push a deadline later cost
nothing). A wake's list is grouped by rule: ``[(uid,), key, key, (uid2,), key, ...]``;
consecutive registrations of one rule at one wake (many events in the same
millisecond) cost one key reference each.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .codec import mid_text
from .plan import Plan, RulePlan, Slim

__all__ = ["NEG_INF", "OFFSET_MASK", "EngineStats", "Match", "PartitionState", "PartitionTimers", "RuleState", "Run",
           "compact_time", "pack", "slim_of"]

NEG_INF = -(2**62)
_SEEN_SWEEP_MIN_MS = 1000
_heappush, _heappop = heapq.heappush, heapq.heappop
OFFSET_MASK = (1 << 64) - 1


def pack(t: int, offset: int) -> int:
    """Event time and log offset as one int, ordered by time: the values of ``seen`` (compact states read
    their first event's time and offset there). The per-event loop inlines it."""
    return t << 64 | offset

class Match(NamedTuple):
    rule: RulePlan
    key: str
    events: tuple[Slim, ...]  # flattened, in match order
    fired_at_ms: int
    payload: Any
    partition: int

    @property
    def message_ids(self) -> list[str]:
        return [e[0] for e in self.events]


@dataclass
class EngineStats:
    events: int = 0
    late: int = 0
    duplicates: int = 0
    matches: int = 0
    suppressed: int = 0
    errors: int = 0


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
    __slots__ = ("partition", "max_t", "watermark", "rules", "follow", "timers", "wheel", "registered", "seen",
                 "next_sweep", "dirty", "new_seen", "seen_cutoff", "last_wake", "last_uid", "marks")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.max_t = NEG_INF
        self.watermark = NEG_INF
        self.rules: dict[str, dict[str, RuleState]] = {}  # rule uid -> key -> state (one dict per rule, kept)
        self.follow: dict[str, tuple[Any, ...]] = {}  # event name -> (states of the rule, rule, steps, by_anon)
        self.timers: list[int] = []  # heap of the distinct wake times in ``wheel``
        self.wheel: dict[int, list[Any]] = {}  # wake time -> [(uid,), key, key, (uid2,), key, ...] registered then
        self.registered = 0  # registrations in ``wheel`` (live or superseded)
        self.seen: dict[int | str, int] = {}  # messageId (codec.compact_mid) -> pack(event time, offset)
        self.next_sweep = NEG_INF
        self.dirty: set[tuple[str, str]] = set()  # changed since the last take_changes()
        self.new_seen: list[tuple[str, int]] = []
        self.seen_cutoff: int | None = None
        self.last_wake, self.last_uid = 0, ""  # the latest registration: its group is the tail of that wake's list
        self.marks: dict[str, tuple[str]] = {}  # uid -> (uid,): the group marker in wheel lists

    @property
    def states(self) -> dict[tuple[str, str], Any]:
        """Every (rule uid, key) state (a copy; for inspection and snapshots)."""
        return {(uid, key): rs for uid, per in self.rules.items() for key, rs in per.items()}

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
    return (mid_text(c[0]), tp >> 64, ps.partition, tp & OFFSET_MASK, c[1:])


def compact_time(c: tuple[Any, ...], ps: PartitionState) -> int:
    """Event time of the first event a compact state holds."""
    return ps.seen[c[0]] >> 64  # type: ignore[no-any-return]


class PartitionTimers:
    """Timer bookkeeping of :class:`rules.engine.Engine` (a mixin: methods only, the engine holds the data)."""

    plan: Plan
    _rules: dict[str, RulePlan]
    _compact: dict[str, int]  # uid of a compact rule -> its step 2's within
    _counts: dict[str, int]  # uid of a one-step count rule (state: its list of counted events) -> within
    track_dirty: bool
    dedup_window_ms: int

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
        ps.watermark = wm
        timers, wheel, prules, seen = ps.timers, ps.wheel, ps.rules, ps.seen
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
                    w = (seen[rs[0]] >> 64) + compact[uid] + 1  # type: ignore[index]
                    if w != wake:
                        if w > wake:
                            ps.register(w, uid, key)  # replaced by a later run: wake it then
                        continue
                    del per[key]
                    if track:
                        ps.dirty.add((uid, key))
                    rule = rules_get(uid)
                    if rule is not None and rule.steps[1].absent:
                        self._complete(ps, rule, key, None, (slim_of(rs, ps),), w - 1, out)
                    continue
                if type(rs) is list:  # a one-step count's events (time order)
                    within = counts[uid]
                    w = rs[0][1] + within + 1
                    if w > wake:
                        ps.register(w, uid, key)  # its first events were counted since: wake then
                        continue
                    cutoff = wm - within  # only memory: an event this old can never be counted again
                    i = 0
                    while i < len(rs) and rs[i][1] < cutoff:
                        i += 1
                    if track:
                        ps.dirty.add((uid, key))
                    if i == len(rs):
                        del per[key]
                        continue
                    del rs[:i]
                    ps.register(rs[0][1] + within + 1, uid, key)
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
                    if acc and acc[-1][1] < wm - rule.steps[0].within_ms:  # type: ignore[operator]
                        del per[key]  # a count whose whole window passed: the common end of a state
                        if track:
                            ps.dirty.add((uid, key))
                        continue
                if self._expire(ps, rule, key, rs, wm, out) and track:
                    ps.dirty.add((uid, key))
                self._reschedule(ps, rule, per, key, rs)
            if len(out) - first_out > 1:
                # Timers due at one time fire in (rule uid, key) order; each entry fires at most once
                # and entries do not affect one another, so sorting what they fired is the same.
                out[first_out:] = sorted(out[first_out:], key=_uid_key)
        if wm >= ps.next_sweep:
            horizon = max(self.plan.horizon_ms, self.dedup_window_ms)
            cutoff = wm - horizon
            if ps.seen:
                packed_cutoff = cutoff << 64  # seen holds pack(t, offset): ordered by t
                ps.seen = {m: tp for m, tp in ps.seen.items() if tp >= packed_cutoff}
            if self.track_dirty:
                ps.seen_cutoff = cutoff
            ps.next_sweep = wm + max(_SEEN_SWEEP_MIN_MS, horizon // 8)

    def _expire(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState, wm: int, out: list[Match]) -> bool:
        """Drop what the watermark ``wm`` has passed (firing absences); True when anything changed."""
        changed = False
        if rs.runs is not None:
            for i, run in enumerate(rs.runs):
                if run is not None and run.deadline < wm:
                    rs.runs[i] = None
                    changed = True
                    if rule.steps[i].absent:
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
        if type(rs) is tuple:
            return compact_time(rs, ps) + self._compact.get(uid, 0) + 1
        if type(rs) is list:
            return rs[0][1] + self._counts.get(uid, 0) + 1  # type: ignore[no-any-return]
        return rs.wake  # type: ignore[no-any-return]
