"""Loading the rules directory, and reloading it while the engine runs.

:meth:`RuleSet.scan` re-reads ``*.rules`` files whose size, mtime or content
changed. A file that compiles replaces its previous rules; a file with errors
is reported (log + ``tripwire_rules_reload_errors``) and its previous version
keeps running; a deleted file's rules stop. A rule whose name an earlier file
(in path order) already uses does not run, and is reported the same way. Rules are identified by a
fingerprint of their meaning, so an unchanged rule keeps its engine state even
when its file was edited elsewhere.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import metrics
from .catalog import EventCatalog
from .compiler import build_plan, compile_text
from .errors import Diagnostic
from .parser import decode_rules
from .plan import Plan, RulePlan

logger = logging.getLogger(__name__)


@dataclass
class _File:
    stamp: tuple[int, int]
    digest: str
    plans: list[RulePlan]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    broken: bool = False


class RuleSet:
    def __init__(self, directory: Path, endpoints: Iterable[str] | None = None, endpoint_severity: str = "warning",
                 catalog: EventCatalog | None = None) -> None:
        self.directory = Path(directory)
        self.endpoints = None if endpoints is None else set(endpoints)
        self.endpoint_severity = endpoint_severity
        self.catalog = catalog  # its warnings are logged like any other (rules/catalog_checks.py)
        self._files: dict[Path, _File] = {}
        self.plan: Plan = Plan.build(())
        self.generation = 0
        self._dups: set[tuple[str, int]] = set()  # (file, line) of rules not running: name used earlier

    def broken(self) -> dict[str, list[Diagnostic]]:
        return {str(p): f.diagnostics for p, f in self._files.items() if f.broken}

    def scan(self) -> bool:
        """Pick up changes; True when the plan changed."""
        try:
            paths = sorted(p for p in self.directory.glob("*.rules") if p.is_file())
        except OSError:
            paths = []
        changed = False
        for gone in set(self._files) - set(paths):
            logger.info("rule file %s removed%s", gone, "; its rules stop" if self._files[gone].plans else "")
            del self._files[gone]
            changed = True
        for path in paths:
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
                old = self._files.get(path)
                if old is not None and old.stamp == stamp:
                    continue
                data = path.read_bytes()
            except OSError as exc:
                logger.warning("rule file %s cannot be read: %s", path, exc)
                continue
            digest = hashlib.sha256(data).hexdigest()
            if old is not None and old.digest == digest:
                old.stamp = stamp
                continue
            text, bad = decode_rules(data, str(path))
            plans: list[RulePlan]
            diagnostics: list[Diagnostic]
            if text is None:
                plans, diagnostics = [], [bad] if bad is not None else []
            else:
                try:
                    plans, diagnostics = compile_text(text, str(path), endpoints=self.endpoints,
                                                      endpoint_severity=self.endpoint_severity, catalog=self.catalog)
                except Exception as exc:  # noqa: BLE001 - a file the compiler cannot handle must not stop the engine
                    logger.exception("rule file %s could not be compiled", path)
                    plans, diagnostics = [], [Diagnostic(str(path), 1, 1, f"cannot be compiled: {type(exc).__name__}")]
            errors = [d for d in diagnostics if d.severity == "error"]
            for d in diagnostics:
                if d.severity == "warning":
                    logger.warning("%s", d.headline())
            if errors:
                metrics.RELOAD_ERRORS.labels(file=path.name).inc()
                running = "previous version keeps running" if old is not None and old.plans else "not running"
                for d in errors:
                    logger.error("rule file rejected (%s): %s", running, d.headline())
                if old is None:
                    self._files[path] = _File(stamp, digest, [], diagnostics, broken=True)
                else:
                    old.stamp, old.digest, old.diagnostics, old.broken = stamp, digest, diagnostics, True
                continue
            if old is None or [p.uid for p in old.plans] != [p.uid for p in plans] or old.broken:
                changed = True
            logger.info("rule file %s loaded: %d rule(s)", path, len(plans))
            self._files[path] = _File(stamp, digest, plans, diagnostics)
        if changed or self.generation == 0:
            plan, dups = build_plan([f.plans for _, f in sorted(self._files.items())])
            # A rule whose name an earlier file already uses does not run: an error like a rejected
            # file (counted once when it appears, and in broken_files while it lasts), not just a log line.
            dup_rules = {(d.file, d.line) for d in dups}
            for d in dups:
                logger.error("%s; this rule does not run", d.headline())
                if (d.file, d.line) not in self._dups:
                    metrics.RELOAD_ERRORS.labels(file=Path(d.file).name).inc()
            self._dups = dup_rules
            self.plan = plan
            self.generation += 1
        broken = {str(p) for p, f in self._files.items() if f.broken} | {file for file, _ in self._dups}
        metrics.BROKEN_FILES.set(len(broken))
        metrics.RULES.set(len(self.plan.rules))
        return changed
