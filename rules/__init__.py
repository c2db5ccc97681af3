"""The rules room: the rule language, its compiler, the event-time engine, backtests and "why not".

Public names (what faces such as the CLI and the console use):

* reading rule files: :func:`decode_rules`, :func:`compile_text`, :func:`build_plan`
  (:class:`Plan`, :class:`RulePlan`, :class:`Diagnostic`), :func:`explain`;
* history: :func:`backtest` (:class:`BacktestResult`), :class:`LakeReader`;
* one key's journey: :func:`why_not` (:class:`WhyNot`): where its events stopped matching a rule, and why;
* the running engine: :func:`engine_status` (its status documents, merged), :func:`rules_config`;
* errors: :class:`RulesError` is the root.

The engine itself runs as a service (:mod:`tripwire.rules.service`, wired by ``tripwire run``).
"""

from __future__ import annotations

from .backtest import BacktestResult, backtest
from .compiler import build_plan, compile_text
from .config import RulesConfig, rules_config, rules_dir
from .errors import Diagnostic, RulesError
from .explain import explain
from .lake import LakeReader
from .parser import decode_rules
from .plan import Plan, RulePlan
from .status import engine_status
from .whynot import WhyNot, why_not

__all__ = [
    "BacktestResult", "Diagnostic", "LakeReader", "Plan", "RulePlan", "RulesConfig", "RulesError", "WhyNot",
    "backtest", "build_plan", "compile_text", "decode_rules", "engine_status", "explain", "rules_config",
    "rules_dir", "why_not",
]
