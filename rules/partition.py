"""What the engine keeps between events: the forms of (rule, key) state, and the state of a partition.

Owns the records the matcher produces and holds (:class:`Match`,
:class:`EngineStats`, :class:`Run`), the three forms a (rule, key) state takes
(:data:`State`), which rules take which (:class:`Forms`), and the state of one
log partition (:class:`PartitionState`) with its timer wheel. Matching events
against steps is :mod:`rules.matching`; firing timers is :mod:`rules.timers`;
:class:`rules.engine.Engine` has both.

Layout, chosen for the hot path and for memory: per partition, one dict per
rule uid mapping key -> state, in one of three forms:

* :class:`Compact`, for "A then B within T" rules without a cap: the one run
  that can wait there, as the flat tuple ``(messageId, *projection)`` of its A,
  the messageId as the duplicate memory holds it (:func:`rules.codec.compact_mid`:
  a UUID's 128-bit int). Its time and offset are not in the tuple: they are in the
  partition's duplicate memory ``seen``, which maps the messageId to the event's
  *stamp* (:func:`rules.codec.stamp`: time, source/key fingerprint and offset in
  one int) and keeps it as long as the state can live (the *recent* span: the
  longest rule window plus the grace and the lateness), so a pending state costs
  no int of its own. Older ids move to :class:`rules.dedup.OldIds`. Its deadline
  follows from the time; it is saved in the general form.
* :class:`Counted`, for one-step count rules ("3 X within T"): the counted events
  (Slims, time order), until the rule fires under a cap (then the general form
  keeps the fire times).
* :class:`RuleState`, the general form: a waiting :class:`Run` per step, a first
  count step's events, the fire times inside the cap window.

Time. A state's timer is due when event time passes its deadline (``deadline + 1``, the
*due* time). Two things decide it: the key's own next event (an event at ``t`` first
expires what ``t`` has passed, firing absences, exactly as a backtest would), and the
watermark, which fires a timer only once it has passed the due time plus the *grace*, so
stragglers of the key (SDK batches, an offline queue) still arrive before anything is
decided for it. A timer whose due time plus the grace the watermark has already passed
when it is registered (a late or replayed event started it) is put at the watermark plus
the grace instead: nothing is decided sooner than the grace after the engine read the
event (:meth:`PartitionState.wheel_time`).

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, final

from .codec import TIME_SHIFT, MidKey, Stamp, mid_text, stamp_offset, stamp_time
from .dedup import LongMemory, OldIds
from .identity import Identity
from .plan import RulePlan, Slim

__all__ = ["NEG_INF", "Compact", "Counted", "EngineStats", "Forms", "Match", "PartitionState", "RuleState", "Run", "State",
           "compact_time", "holds_partial", "remember_fired", "slim_of", "wheel_entries"]

NEG_INF = -(2**62)
_FIRED_KEPT = 10_000  # absences fired per partition remembered to count late cancels
_heappush = heapq.heappush


class Match(NamedTuple):
    rule: RulePlan
    key: str
    events: tuple[Slim, ...]  # flattened, in match order
    fired_at_ms: int
    payload: Any
    partition: int
    identity: Identity = (None, None, None)  # rules.identity.identity_of

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
    refused: int = 0  # partial matches not started: the partition held max_pending states


# (rule, key) states ------------------------------------------------------------------


class Run:
    """A partial match waiting at one step."""

    __slots__ = ("steps", "anchor", "deadline", "acc")

    def __init__(self, steps: tuple[Any, ...], anchor: int, deadline: int, acc: tuple[Slim, ...] | None = None):
        self.steps = steps  # per matched step: a Slim, or a tuple of Slims for a count step
        self.anchor = anchor  # event time of the last matched event
        self.deadline = deadline  # anchor + the waiting step's within
        self.acc = acc  # events counted so far when the waiting step is a count


@final
class RuleState:
    """The general form of a (rule, key) state."""

    __slots__ = ("runs", "acc", "fires", "wake")

    def __init__(self, n_steps: int) -> None:
        self.runs: list[Run | None] | None = [None] * n_steps if n_steps > 1 else None
        self.acc: list[Slim] | None = None  # count step 0: counted events, time order
        self.fires: list[int] | None = None  # fire times inside the cap window
        self.wake = 0  # earliest registered timer (0: none)

    def empty(self) -> bool:
        return not self.acc and not self.fires and (self.runs is None or not any(self.runs))


if TYPE_CHECKING:
    @final
    class Compact(tuple[Any, ...]):
        """The compact form: the one run of an "A then B within T" rule (no cap) waiting at B, as
        ``(messageId as the duplicate memory keys it, *projection of A)``; A's time and offset are in that
        memory (:func:`slim_of`)."""

    @final
    class Counted(list[Slim]):
        """The count-list form: a one-step count rule's counted events, in event-time order."""
else:
    # At run time the two forms are the builtins themselves, as for a NewType: an instance of a
    # subclass costs an item slot more, and the interpreter's fast paths (indexing, the collector
    # untracking tuples of plain values) are for exact tuples and lists. mypy checks them as the
    # distinct classes above, so no other tuple or list can be stored as a state.
    Compact = tuple
    Counted = list


State = Compact | Counted | RuleState
"""A (rule, key) state, in one of its three forms, told apart by ``type(state) is ...`` (the classes are final,
so that narrows for mypy too; at run time ``Compact is tuple`` and ``Counted is list``)."""


def holds_partial(state: State) -> bool:
    """Whether a state holds a partial match (a state may only remember fire times for an ``at most`` cap)."""
    if type(state) is RuleState:
        return bool(state.acc) or (state.runs is not None and any(state.runs))
    return bool(state)


@dataclass(frozen=True)
class Forms:
    """Which form the states of each rule of a plan take (rules not named here: :class:`RuleState`)."""

    rules: dict[str, RulePlan]  # uid -> rule
    compact: dict[str, int]  # uid of a rule whose states are Compact -> its step 2's within
    counts: dict[str, int]  # uid of a rule whose states start Counted -> its step 1's within

    @classmethod
    def of(cls, rules: Iterable[RulePlan]) -> Forms:
        rules = tuple(rules)
        # "A then B within T" (single events, no cap): a key's state is at most one run waiting at B.
        compact = {r.uid: r.steps[1].within_ms or 0 for r in rules
                   if len(r.steps) == 2 and r.steps[0].count == 1 and r.steps[1].count == 1 and r.cap_times is None}
        # "3 X within T": a key's state is the list of its counted events until it fires under a cap.
        counts = {r.uid: r.steps[0].within_ms or 0 for r in rules if len(r.steps) == 1 and r.steps[0].count > 1}
        return cls({r.uid: r for r in rules}, compact, counts)


# a partition ---------------------------------------------------------------------------


class PartitionState:
    __slots__ = ("partition", "grace", "max_t", "watermark", "rules", "follow", "timers", "wheel", "registered", "seen",
                 "next_sweep", "dirty", "new_seen", "seen_cutoff", "last_wake", "last_uid", "marks", "old", "seen_floor",
                 "fired", "identity", "budget")

    def __init__(self, partition: int, grace: int = 0) -> None:
        self.partition = partition
        self.grace = grace
        self.max_t = NEG_INF
        self.watermark = NEG_INF
        self.rules: dict[str, dict[str, State]] = {}  # rule uid -> key -> state (one dict per rule, kept)
        # event name -> (states of the rule, rule, step indexes descending, by anonymousId)
        self.follow: dict[str, tuple[tuple[dict[str, State], RulePlan, tuple[int, ...], bool], ...]] = {}
        self.timers: list[int] = []  # heap of the distinct wake times in ``wheel``
        self.wheel: dict[int, list[Any]] = {}  # wake time -> [(uid,), key, key, (uid2,), key, ...] registered then
        self.registered = 0  # registrations in ``wheel`` (live or superseded)
        self.seen: dict[MidKey, Stamp] = {}  # the duplicate memory's recent span (rules.codec)
        self.next_sweep = NEG_INF
        self.dirty: set[tuple[str, str]] = set()  # changed since the last take_changes()
        self.new_seen: list[tuple[str, int, int]] = []  # (messageId, event time, fingerprint)
        self.seen_cutoff: int | None = None
        self.budget = 0  # new states that may start before they are counted again against [rules] max_pending
        self.old: LongMemory = OldIds()  # ids older than seen_floor (embedded engines: StoredOldIds)
        self.seen_floor = NEG_INF  # seen holds every id of an event at or after this time
        # key -> rule uid -> (steps, anchor, deadline) of the absences that fired (to count late cancels)
        self.fired: OrderedDict[str, dict[str, tuple[Any, int, int]]] = OrderedDict()
        self.last_wake, self.last_uid = 0, ""  # the latest registration: its group is the tail of that wake's list
        self.identity: dict[str, Identity] = {}  # key -> (userId, anonymousId, trust) last read (rules.identity)
        self.marks: dict[str, tuple[str]] = {}  # uid -> (uid,): the group marker in wheel lists

    def pending(self) -> int:
        """Number of (rule, key) states held."""
        return sum(len(per) for per in self.rules.values())

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


def wheel_entries(flat: list[Any]) -> Iterator[tuple[str, str]]:
    """(uid, key) of each registration in a wake's list."""
    uid = ""
    for x in flat:
        if type(x) is tuple:
            uid = x[0]
        else:
            yield uid, x


def slim_of(c: Compact, ps: PartitionState) -> Slim:
    """The Slim a compact state of partition ``ps`` stands for."""
    s = ps.seen[c[0]]
    return (mid_text(c[0]), stamp_time(s), ps.partition, stamp_offset(s), c[1:])


def compact_time(c: Compact, ps: PartitionState) -> int:
    """Event time of the first event a compact state holds."""
    return ps.seen[c[0]] >> TIME_SHIFT


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
