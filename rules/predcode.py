"""Predicates compiled to one Python function each (``compile()`` once, at rule load).

:func:`rules.predicates.compile_expr` builds a tree of closures (one call per
``and``, comparison and field read) and returns the three-valued result. The
engine only ever asks whether a ``where`` *holds* (``pred(env, steps) is
True``), so here the same expression is translated into a single boolean
Python expression that is true exactly when the closure tree returns ``True``:

* ``T(e)``: e is True; ``F(e)``: e is False (needed under ``not``);
* a comparison or ``in`` with a missing or null field (or a ``null`` literal)
  is neither; ``exists`` is never unknown;
* ``T(a and b) = T(a) and T(b)``, ``F(a and b) = F(a) or F(b)``,
  ``T(a or b) = T(a) or T(b)``, ``F(a or b) = F(a) and F(b)``,
  ``T(not a) = F(a)``, ``F(not a) = T(a)``.

Each field path is read once per call, into a local, before the expression;
comparisons use the same helpers as the closures (string/number fast paths
inline), so the verdicts are the same (``tests/rules/test_predcode.py``
checks it on random envelopes). Anything this module does not know falls back
to the closure.
"""

from __future__ import annotations

from typing import Any

from . import ast
from .plan import MISSING, Predicate
from .predicates import StepScope, _eq, _order, compare_values

__all__ = ["fast_predicate"]


def _in(v: Any, values: tuple[Any, ...]) -> bool:
    return any(_eq(v, x) for x in values)


class _Unsupported(Exception):
    pass


class _Gen:
    def __init__(self, scope: StepScope) -> None:
        self.scope = scope
        self.consts: dict[str, Any] = {"MISSING": MISSING, "_test": compare_values, "_eq": _eq, "_order": _order, "_in": _in}
        self.reads: dict[tuple[Any, ...], str] = {}  # field reference -> local name
        self.lines: list[str] = []

    def const(self, value: Any) -> str:
        name = f"k{len(self.consts)}"
        self.consts[name] = value
        return name

    def operand(self, node: ast.Operand) -> tuple[str, bool]:
        """(Python expression, may be MISSING)."""
        if isinstance(node, ast.Literal):
            v = node.value
            if type(v) is str or type(v) is int or type(v) is bool or v is None:
                return repr(v), False
            return self.const(v), False
        return self.local(self._ref(node)), True

    def local(self, ref: tuple[Any, ...]) -> str:
        """The local holding a field reference, read once at the top of the function."""
        name = self.reads.get(ref)
        if name is not None:
            return name
        if ref[0] == "slot":
            _, j, k, count = ref
            return self._assign(ref, f"st[{j}][-1][4][{k}]" if count else f"st[{j}][4][{k}]")
        parts = ref[1]
        if not all(type(p) is str for p in parts):
            raise _Unsupported
        # as env_getter: a missing key or a non-object on the way is MISSING; JSON null stays None.
        # Each prefix is a local read from the one before (a loop: a path may have hundreds of parts).
        name = self.reads.get(("env", parts[:1])) or self._assign(("env", parts[:1]), f"env.get({parts[0]!r}, MISSING)")
        for n in range(2, len(parts) + 1):
            parent, name = name, self.reads.get(("env", parts[:n]))
            if name is None:
                code = f"({parent}.get({parts[n - 1]!r}, MISSING) if type({parent}) is dict else MISSING)"
                name = self._assign(("env", parts[:n]), code)
        return name

    def _assign(self, ref: tuple[Any, ...], code: str) -> str:
        name = self.reads[ref] = f"v{len(self.reads)}"
        self.lines.append(f"    {name} = {code}")
        return name

    def _ref(self, path: ast.Path) -> tuple[Any, ...]:
        """Mirror of StepScope.getter (which ran first: diagnostics and projection slots are done)."""
        s = self.scope
        head, rest = path.parts[0], path.parts[1:]
        if head in s.aliases:
            j = s.aliases[head]
            if j == s.current:
                if not rest:
                    raise _Unsupported
                return ("env", rest)
            if j > s.current or s.steps[j].absent or not rest or s.current < 0:
                raise _Unsupported
            return ("slot", j, s.needs[j].index(rest), s.steps[j].count > 1)
        if s.current < 0:
            raise _Unsupported
        return ("env", path.parts)

    def truth(self, node: ast.Expr, want: bool) -> str:
        """Python boolean expression: ``node`` evaluates to ``want`` (True or False, never unknown)."""
        if isinstance(node, ast.And):
            a, b = self.truth(node.left, want), self.truth(node.right, want)
            return f"({a} and {b})" if want else f"({a} or {b})"
        if isinstance(node, ast.Or):
            a, b = self.truth(node.left, want), self.truth(node.right, want)
            return f"({a} or {b})" if want else f"({a} and {b})"
        if isinstance(node, ast.Not):
            return self.truth(node.operand, not want)
        if isinstance(node, ast.Exists):
            if isinstance(node.operand, ast.Literal):
                raise _Unsupported
            v, _ = self.operand(node.operand)
            holds = f"({v} in (MISSING, None))" if node.negated else f"({v} not in (MISSING, None))"
            return holds if want else f"(not {holds})"
        if isinstance(node, ast.InList):
            if isinstance(node.operand, ast.Literal):
                raise _Unsupported
            v, _ = self.operand(node.operand)
            values = self.const(tuple(x.value for x in node.values))
            found = f"_in({v}, {values})"
            holds = found if want != node.negated else f"not {found}"
            return f"({v} is not MISSING and {v} is not None and {holds})"
        if isinstance(node, (ast.Compare, ast.StringOp)):
            if any(isinstance(x, ast.Literal) and x.value is None for x in (node.left, node.right)):
                return "False"  # a comparison with null is unknown: neither true nor false
            (a, a_missing), (b, b_missing) = self.operand(node.left), self.operand(node.right)
            present = [f"{x} is not MISSING and {x} is not None" for x, m in ((a, a_missing), (b, b_missing)) if m]
            test = self._test(node.op, a, b, node.right if not b_missing else None)
            holds = test if want else f"not {test}"
            return "(" + " and ".join([*present, holds]) + ")"
        raise _Unsupported

    def _test(self, op: str, a: str, b: str, const: ast.Operand | None) -> str:
        c = const.value if isinstance(const, ast.Literal) else MISSING
        if type(c) is str:
            if op == "==":
                return f"(type({a}) is str and {a} == {b})"
            if op == "!=":
                return f"(type({a}) is not str or {a} != {b})"
            if op == "starts with":
                return f"(type({a}) is str and {a}.startswith({b}))"
            if op == "ends with":
                return f"(type({a}) is str and {a}.endswith({b}))"
        if (type(c) is int or type(c) is float) and op in ("<", "<=", ">", ">="):
            return f"((type({a}) is int or type({a}) is float) and {a} {op} {b})"
        return f"_test({op!r}, {a}, {b})"


def fast_predicate(node: ast.Expr, scope: StepScope, closure: Predicate) -> Predicate:
    """One compiled function true exactly where ``closure`` returns True (or ``closure`` itself)."""
    gen = _Gen(scope)
    try:
        expr = gen.truth(node, True)
    except (_Unsupported, ValueError):
        return closure
    src = "\n".join(["def pred(env, st):", *gen.lines, f"    return True if {expr} else False"])
    namespace = dict(gen.consts)
    exec(compile(src, "<rule predicate>", "exec"), namespace)  # noqa: S102 - generated from the parsed rule only
    fn: Predicate = namespace["pred"]
    fn.source = src  # type: ignore[attr-defined]  # for debugging: what the rule compiled to
    return fn
