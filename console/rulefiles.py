"""The rules directory as the console shows it: every rule that compiles, and every file that does not.

Compiled here with the rules room's public compiler, the way the engine loads the
directory (the same endpoint policy: with a config file, a post to an endpoint
that is not configured is an error). What the *running* engine does with them
(running, quarantined, pending matches, triggers) comes from its status
document (:func:`tripwire.rules.engine_status`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tripwire.config import Config
from tripwire.rules import Diagnostic, Plan, RulePlan, build_plan, compile_text, decode_rules, rules_config, rules_dir
from tripwire.triggers import endpoints


@dataclass
class RuleFiles:
    directory: Path
    plan: Plan
    files: list[Path]
    errors: dict[str, list[Diagnostic]] = field(default_factory=dict)  # file -> its errors (the file does not run)
    warnings: dict[str, list[Diagnostic]] = field(default_factory=dict)

    def rule(self, name: str) -> RulePlan | None:
        return next((r for r in self.plan.rules if r.name == name), None)


def endpoint_policy(config: Config) -> tuple[set[str], str]:
    """As the engine applies it: configured names; unknown ones are errors once a config file or endpoint exists."""
    names = set(endpoints(config))
    return names, "error" if (config.source_path is not None or names) else "warning"


def load(config: Config, directory: Path | None = None) -> RuleFiles:
    directory = directory or rules_dir(config, rules_config(config))
    names, severity = endpoint_policy(config)
    try:
        files = sorted(p for p in directory.glob("*.rules") if p.is_file())
    except OSError:
        files = []
    compiled = []
    out = RuleFiles(directory, Plan.build(()), files)
    for path in files:
        plans = _compile(path, names, severity, out)
        if plans is not None:
            compiled.append(plans)
    plan, dups = build_plan(compiled)
    for d in dups:
        out.errors.setdefault(d.file, []).append(d)
    out.plan = plan
    return out


def load_file(config: Config, path: Path) -> RuleFiles:
    """One rule file alone (a backtest's), with the same checks."""
    names, severity = endpoint_policy(config)
    out = RuleFiles(path.parent, Plan.build(()), [path])
    plans = _compile(path, names, severity, out)
    out.plan, _ = build_plan([plans] if plans is not None else [])
    return out


def _compile(path: Path, names: set[str], severity: str, out: RuleFiles) -> list[RulePlan] | None:
    """The file's rules, or None when it has errors (noted in ``out``, as warnings are)."""
    try:
        text, bad = decode_rules(path.read_bytes(), str(path))
    except OSError as exc:
        out.errors[str(path)] = [Diagnostic(str(path), 1, 1, f"cannot be read: {exc.strerror or exc}")]
        return None
    if text is None:
        out.errors[str(path)] = [bad] if bad is not None else []
        return None
    plans, diagnostics = compile_text(text, str(path), endpoints=names, endpoint_severity=severity)
    errors = [d for d in diagnostics if d.severity == "error"]
    warnings = [d for d in diagnostics if d.severity != "error"]
    if warnings:
        out.warnings[str(path)] = warnings
    if errors:  # the engine runs none of a file with errors
        out.errors[str(path)] = errors
        return None
    return plans
