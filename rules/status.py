"""What the running engine reports about itself, for ``tripwire rules status``.

The engine service writes a *status document* every few seconds (and at once when a
rule is quarantined, and when it stops), atomically, one per engine process next to its
state: ``<data_dir>/rules-status/<instance>.json`` on the embedded log (``tripwire run
--engines N`` runs N), ``<checkpoint_url>/<group>/status/<instance>.json`` on Kafka.
It holds, per rule, whether it runs or is quarantined (with the error, file:line and
the messageId that raised), the pending partial matches, triggers, errors and late
cancels; the files that do not compile; and, per source, the events refused as older
than ``max_lateness``. ``tripwire rules status`` merges the documents of the
instances and adds, per source, the collector's delivery delay (p50/p99 from its
``tripwire_collector_event_delay_seconds`` histogram) next to the grace.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from .engine import Engine
from .reload import RuleSet

DIR_NAME = "rules-status"
STALE_S = 120.0  # an instance whose document is older than this is reported as not running
_FORGOTTEN_S = 86_400.0  # documents of instances silent this long are removed (each process is an instance)


def instance_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_status(engine: Engine, ruleset: RuleSet, *, triggers: Mapping[str, int], partitions: Iterable[int],
                 allowed_lateness_ms: int) -> dict[str, Any]:
    pending: dict[str, int] = {}
    for ps in engine.partitions.values():
        for uid, per in ps.rules.items():
            pending[uid] = pending.get(uid, 0) + len(per)
    rules = []
    for rule in ruleset.plan.rules:
        q = engine.quarantined.get(rule.uid)
        rules.append({
            "name": rule.name, "file": rule.file, "line": rule.line,
            "status": "quarantined" if q is not None else "running",
            "error": None if q is None else q.error, "message_id": None if q is None else q.message_id,
            "pending": pending.get(rule.uid, 0), "triggers": triggers.get(rule.name, 0),
            "errors": engine.errors_by_rule.get(rule.name, 0), "late_cancels": engine.late_cancels_by_rule.get(rule.name, 0),
        })
    s = engine.stats
    return {
        "written_at": time.time(), "instance": instance_name(), "partitions": sorted(partitions),
        "grace_ms": engine.grace_ms, "max_lateness_ms": engine.max_lateness_ms, "allowed_lateness_ms": allowed_lateness_ms,
        "rules": rules,
        "broken_files": {f: [d.headline() for d in ds] for f, ds in ruleset.broken().items()},
        "too_late": {src: {"events": n, "oldest_ms": engine.too_late_age.get(src, 0)}
                     for src, n in engine.too_late_by_source.items()},
        "events": {"read": s.events, "late": s.late, "too_late": s.too_late, "duplicates": s.duplicates,
                   "out_of_order": s.out_of_order, "late_cancels": s.late_cancels, "errors": s.errors},
    }


def write_status(fs: Any, path: str, doc: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees half a document (local: rename; S3: one PUT)."""
    data = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, p)
    else:
        fs.pipe_file(path, data)


def read_status(fs: Any, paths: Iterable[str], keep_paths: bool = False) -> list[dict[str, Any]]:
    """The documents at ``paths`` (unreadable ones left out, or as ``{}`` with ``keep_paths``)."""
    docs = []
    for path in paths:
        try:
            doc = orjson.loads(fs.cat_file(path))
        except (FileNotFoundError, orjson.JSONDecodeError):
            doc = None
        if isinstance(doc, dict):
            docs.append(doc)
        elif keep_paths:
            docs.append({})
    return docs


def merge(docs: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """One view of several instances (Kafka: each owns some partitions). Stale instances are left out."""
    now = time.time() if now is None else now
    live = [d for d in docs if now - float(d.get("written_at", 0)) <= STALE_S]
    out: dict[str, Any] = {"instances": len(live), "stale_instances": len(docs) - len(live), "rules": {}, "too_late": {},
                           "broken_files": {}, "events": {}, "partitions": []}
    for d in live:
        for k in ("grace_ms", "max_lateness_ms", "allowed_lateness_ms"):
            out[k] = d.get(k)
        out["written_at"] = max(out.get("written_at", 0), d.get("written_at", 0))
        out["partitions"] = sorted(set(out["partitions"]) | set(d.get("partitions", [])))
        out["broken_files"].update(d.get("broken_files", {}))
        for r in d.get("rules", []):
            acc = out["rules"].setdefault(r["name"], {**r, "pending": 0, "triggers": 0, "errors": 0, "late_cancels": 0})
            for k in ("pending", "triggers", "errors", "late_cancels"):
                acc[k] += r.get(k, 0)
            if r.get("status") == "quarantined":
                acc.update(status="quarantined", error=r.get("error"), message_id=r.get("message_id"))
        for src, v in d.get("too_late", {}).items():
            acc = out["too_late"].setdefault(src, {"events": 0, "oldest_ms": 0})
            acc["events"] += v.get("events", 0)
            acc["oldest_ms"] = max(acc["oldest_ms"], v.get("oldest_ms", 0))
        for k, v in d.get("events", {}).items():
            out["events"][k] = out["events"].get(k, 0) + v
    return out


def embedded_status_path(data_dir: Path) -> str:
    """Where this process's status document goes on the embedded log."""
    return str(data_dir / DIR_NAME / f"{instance_name()}.json")


def status_documents(config: Any) -> tuple[Any, list[str]]:
    """(filesystem, paths) of every engine instance's status document, where the configured deployment
    writes them."""
    import fsspec

    from .config import checkpoint_url, rules_config
    from .state import CheckpointStore

    rc = rules_config(config)
    if config.log.backend == "kafka":
        store = CheckpointStore(checkpoint_url(config, rc), rc.group, rc.storage_options)
        return store.status_path("x")[0], store.status_paths()
    return fsspec.filesystem("file"), sorted(str(p) for p in (Path(config.data_dir) / DIR_NAME).glob("*.json"))


def engine_status(config: Any) -> dict[str, Any]:
    """The running engines' status as :func:`merge` gives it."""
    fs, paths = status_documents(config)
    return merge(read_status(fs, paths))


def forget_silent(fs: Any, paths: list[str], now: float | None = None) -> None:
    """Remove documents of instances silent for a day (every restart is a new instance)."""
    now = time.time() if now is None else now
    for doc, path in zip(read_status(fs, paths, keep_paths=True), paths, strict=False):
        if now - float(doc.get("written_at", 0)) > _FORGOTTEN_S:
            with contextlib.suppress(OSError):
                fs.rm_file(path)


# The collector's delay histogram -----------------------------------------------------------------

DELAY_METRIC = "tripwire_collector_event_delay_seconds"


def delays_from_metrics(text: str) -> dict[str, dict[str, float]]:
    """Per source: events, p50 and p99 of the delivery delay (s), from a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != DELAY_METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                src = sample.labels.get("source", "")
                buckets.setdefault(src, []).append((float(sample.labels["le"]), sample.value))
    out = {}
    for src, bs in buckets.items():
        bs.sort()
        total = bs[-1][1] if bs else 0.0
        if total <= 0:
            continue
        out[src] = {"events": total, "p50": _quantile(bs, 0.5), "p99": _quantile(bs, 0.99)}
    return out


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """As PromQL's histogram_quantile: linear within the bucket holding the q-th event."""
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            if n == prev_n:
                return le
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
        prev_le, prev_n = le, n
    return prev_le


# Text ------------------------------------------------------------------------------------------

def _dur(ms: float) -> str:
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.0f} h" if s % 3600 == 0 else f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def format_status(view: dict[str, Any], delays: dict[str, dict[str, float]] | None, delay_note: str = "") -> str:
    if not view["instances"]:
        stale = f" ({view['stale_instances']} stopped or silent for over {STALE_S:.0f} s)" if view["stale_instances"] else ""
        return f"no rules engine is running{stale}"
    grace = view.get("grace_ms") or 0
    lines = [
        f"rules engine: {view['instances']} instance(s), partitions {', '.join(map(str, view['partitions'])) or 'none'}"
        f", as of {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(view['written_at']))}",
        f"grace {_dur(grace)}, max lateness {_dur(view.get('max_lateness_ms') or 0)}, "
        f"reorder buffer {view.get('allowed_lateness_ms')} ms",
        "",
        f"{'RULE':<32} {'STATUS':<12} {'PENDING':>8} {'TRIGGERS':>9} {'ERRORS':>7} {'LATE CANCELS':>13}",
    ]
    for r in sorted(view["rules"].values(), key=lambda r: (r["file"], r["line"])):
        lines.append(f"{r['name'][:32]:<32} {r['status']:<12} {r['pending']:>8,} {r['triggers']:>9,} {r['errors']:>7,} "
                     f"{r['late_cancels']:>13,}")
        if r["status"] == "quarantined":
            lines.append(f"  {r['file']}:{r['line']}: {r['error']} (event messageId {r['message_id']}); "
                         "it runs again once its file changes")
    for f, heads in sorted(view["broken_files"].items()):
        for h in heads:
            lines.append(f"broken: {h}")
    ev = view["events"]
    lines += ["", f"events read {ev.get('read', 0):,}: {ev.get('late', 0):,} behind the watermark (matched), "
              f"{ev.get('too_late', 0):,} older than max lateness (not matched), {ev.get('duplicates', 0):,} duplicates, "
              f"{ev.get('out_of_order', 0):,} out of their key's order"]
    sources = sorted(set(view["too_late"]) | set(delays or {}))
    if sources:
        lines += ["", f"{'SOURCE':<20} {'DELAY P50':>10} {'DELAY P99':>10} {'TOO LATE':>9}  OLDEST REFUSED"]
        warnings = []
        for src in sources:
            d = (delays or {}).get(src)
            tl = view["too_late"].get(src, {"events": 0, "oldest_ms": 0})
            p50 = _dur(d["p50"] * 1000) if d else "-"
            p99 = _dur(d["p99"] * 1000) if d else "-"
            oldest = _dur(tl["oldest_ms"]) if tl["events"] else ""
            lines.append(f"{src[:20]:<20} {p50:>10} {p99:>10} {tl['events']:>9,}  {oldest}")
            if d and d["p99"] * 1000 > grace:
                warnings.append(f"warning: {src}: 99% of events arrive within {_dur(d['p99'] * 1000)}, longer than the "
                                f"grace ({_dur(grace)}): absences may fire before their cancel arrives; raise "
                                "[rules] grace (rules/LANGUAGE.md, \"Time, lateness and the watermark\")")
        lines += warnings
    if delay_note:
        lines.append(delay_note)
    return "\n".join(lines)
