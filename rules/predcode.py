"""Conditions compiled to Python functions: the one evaluator of what a ``where`` means.

A step's condition is translated to Python source and compiled (``compile()``)
into one of two functions of ``(event, earlier steps of the run)``:

* :func:`compile_condition`: the engine's predicate, true exactly where the
  condition holds (callers test ``pred(env, steps) is True``);
* :func:`compile_tests`: for "why not" (:mod:`rules.whycheck`), each test of the
  condition (a comparison, ``in``, string operator or ``exists``) with its
  three-valued result and the values it read.

Both are built from the same translation of each test (:meth:`_Gen.test`):
``known``, true when the test's result is known (every field it compares is
present and not null, no operand is a ``null`` literal; ``exists`` is always
known), and ``value``, its result when known. A test is True where ``known and
value``, False where ``known and not value``, unknown (None) elsewhere; the
three-valued logic above the tests follows from

* ``T(a and b) = T(a) and T(b)``, ``F(a and b) = F(a) or F(b)``,
* ``T(a or b) = T(a) or T(b)``, ``F(a or b) = F(a) and F(b)``,
* ``T(not a) = F(a)``, ``F(not a) = T(a)``,

so a condition holds only when it is True: an event missing a field the
condition compares never matches, and nothing raises. Each field is read once
per call, into a local, before the expression. How values compare is
:func:`rules.predicates.compare_values` (string and number tests against a
constant are written inline, to the same effect); where a path is read is
:meth:`rules.predicates.StepScope.resolve`. What is wrong with a condition (a
test on a constant, a ``null`` literal) is reported to the scope's context as
it is compiled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import ast
from .plan import MISSING, Predicate
from .predicates import Ctx, EnvField, Ref, StepField, StepScope, TriggerIdentity, compare_values, in_values

__all__ = ["Test", "TestResults", "Tests", "compile_condition", "compile_tests"]

Leaf = ast.Compare | ast.StringOp | ast.InList | ast.Exists
TestResults = tuple[tuple["bool | None", tuple[Any, ...]], ...]


@dataclass(frozen=True)
class Test:
    """One test of a condition."""

    node: Leaf
    negated: bool  # under an odd number of `not`s
    paths: tuple[ast.Path, ...]  # the fields it reads, in the order :attr:`Tests.run` gives their values


@dataclass(frozen=True)
class Tests:
    """The tests of a condition, left to right, and one function running them all on an event."""

    tests: tuple[Test, ...]
    # (event, earlier steps) -> per test: (True | False | None: unknown, the values of its paths; MISSING when absent)
    run: Callable[[Mapping[str, Any], tuple[Any, ...]], TestResults]


def compile_condition(node: ast.Expr, scope: StepScope) -> Predicate:
    """The predicate of condition ``node`` in ``scope``: True exactly where the condition holds, else False."""
    gen = _Gen(scope)
    expr = gen.truth(node, True)
    pred: Predicate = gen.function("pred", f"True if {expr} else False")
    return pred


def compile_tests(node: ast.Expr, scope: StepScope) -> Tests:
    """The tests of condition ``node`` in ``scope`` (diagnostics go to the scope's context, as they did when
    the rule was compiled: pass a scratch one)."""
    gen = _Gen(scope)
    tests: list[Test] = []
    results: list[str] = []
    todo: list[tuple[ast.Expr, bool]] = [(node, False)]
    while todo:
        n, negated = todo.pop()
        if isinstance(n, (ast.And, ast.Or)):
            todo += [(n.right, negated), (n.left, negated)]
        elif isinstance(n, ast.Not):
            todo.append((n.operand, not negated))
        else:
            code = gen.test(n)
            result = code.value if code.known is None else f"({code.value} if {code.known} else None)"
            tests.append(Test(n, negated, _paths(n)))
            results.append(f"({result}, ({''.join(r + ', ' for r in code.reads)}))")
    run: Callable[[Mapping[str, Any], tuple[Any, ...]], TestResults] = gen.function(
        "tests", f"({''.join(r + ', ' for r in results)})")
    return Tests(tuple(tests), run)


@dataclass(frozen=True)
class _Code:
    """A test as Python expressions: ``value`` is its result where ``known`` (None: always) holds."""

    known: str | None
    value: str
    reads: tuple[str, ...]  # the locals of the fields it reads, per path operand


def _present(v: str) -> str:
    return f"{v} is not MISSING and {v} is not None"


def _paths(node: Leaf) -> tuple[ast.Path, ...]:
    operands: tuple[ast.Operand, ...] = (node.left, node.right) if isinstance(node, (ast.Compare, ast.StringOp)) \
        else (node.operand,)
    return tuple(x for x in operands if isinstance(x, ast.Path))


def _chain(node: ast.And | ast.Or) -> list[ast.Expr]:
    """The operands of a run of the same operator (``a and b and c``), left to right."""
    out: list[ast.Expr] = []
    todo: list[ast.Expr] = [node]
    while todo:
        n = todo.pop()
        if type(n) is type(node):
            assert isinstance(n, (ast.And, ast.Or))
            todo += [n.right, n.left]
        else:
            out.append(n)
    return out


class _Gen:
    def __init__(self, scope: StepScope) -> None:
        self.scope = scope
        self.consts: dict[str, Any] = {"MISSING": MISSING, "_test": compare_values, "_in": in_values}
        self.reads: dict[tuple[str, ...] | StepField, str] = {}  # field -> the local holding it
        self.lines: list[str] = []

    def function(self, name: str, expr: str) -> Any:
        src = "\n".join([f"def {name}(env, st):", *self.lines, f"    return {expr}"])
        namespace = dict(self.consts)
        exec(compile(src, f"<rule {name}>", "exec"), namespace)  # noqa: S102 - generated from the parsed rule only
        fn = namespace[name]
        fn.source = src  # for debugging: what the condition compiled to
        return fn

    def const(self, value: Any) -> str:
        name = f"k{len(self.consts)}"
        self.consts[name] = value
        return name

    def operand(self, node: ast.Operand) -> tuple[str, bool]:
        """(Python expression, whether it is a field)."""
        if isinstance(node, ast.Literal):
            v = node.value
            if type(v) is str or type(v) is bool or v is None or (type(v) is int and abs(v) < 2**64):
                return repr(v), False
            return self.const(v), False
        return self.local(self.scope.resolve(node)), True

    def local(self, ref: Ref) -> str:
        """The local holding a field, read once at the top of the function (a path that reads nothing:
        MISSING)."""
        if ref is None:
            return "MISSING"
        if isinstance(ref, TriggerIdentity):
            raise TypeError("only a payload reads the trigger's identity")
        if isinstance(ref, StepField):
            name = self.reads.get(ref)
            if name is None:
                last = "[-1]" if ref.count else ""
                name = self._assign(ref, f"st[{ref.step}]{last}[4][{ref.slot}]")
            return name
        # A missing key or a non-object on the way is MISSING; JSON null stays None (as env_getter). Each
        # prefix is a local read from the one before (a loop: a path may have hundreds of parts).
        parts = ref.parts
        name = self.reads.get(parts[:1]) or self._assign(parts[:1], f"env.get({parts[0]!r}, MISSING)")
        for n in range(2, len(parts) + 1):
            parent, found = name, self.reads.get(parts[:n])
            if found is None:
                found = self._assign(parts[:n], f"({parent}.get({parts[n - 1]!r}, MISSING) if type({parent}) is dict else MISSING)")
            name = found
        return name

    def _assign(self, key: tuple[str, ...] | StepField, code: str) -> str:
        name = self.reads[key] = f"v{len(self.reads)}"
        self.lines.append(f"    {name} = {code}")
        return name

    def truth(self, node: ast.Expr, want: bool) -> str:
        """Python boolean expression: ``node`` evaluates to ``want`` (True or False, never unknown)."""
        if isinstance(node, (ast.And, ast.Or)):
            joiner = " and " if isinstance(node, ast.And) == want else " or "
            return "(" + joiner.join(self.truth(x, want) for x in _chain(node)) + ")"
        if isinstance(node, ast.Not):
            return self.truth(node.operand, not want)
        code = self.test(node)
        value = code.value if want else f"(not {code.value})"
        return value if code.known is None else f"({code.known} and {value})"

    def test(self, node: Leaf) -> _Code:
        ctx = self.scope.ctx
        if isinstance(node, ast.Exists):
            v, field = self.operand(node.operand)
            if not field:
                ctx.error(node, "`exists` applies to a field, not a constant")
                return _Code(None, "False", ())
            return _Code(None, f"({v} in (MISSING, None))" if node.negated else f"({v} not in (MISSING, None))", (v,))
        if isinstance(node, ast.InList):
            v, field = self.operand(node.operand)
            if not field:
                ctx.error(node, "`in` applies to a field, not a constant")
                return _Code(None, "False", ())
            for x in node.values:
                if x.value is None:
                    ctx.error(x, "null in a list never matches (null counts as missing)", "warning")
            found = f"_in({v}, {self.const(tuple(x.value for x in node.values))})"
            return _Code(_present(v), f"(not {found})" if node.negated else found, (v,))
        (a, a_field), (b, b_field) = self.operand(node.left), self.operand(node.right)
        reads = tuple(x for x, field in ((a, a_field), (b, b_field)) if field)
        if not reads:
            ctx.error(node, "this compares two constants; one side should be a field")
        if any(isinstance(x, ast.Literal) and x.value is None for x in (node.left, node.right)):
            _null_warning(node, ctx)
            return _Code("False", "False", reads)  # a `null` literal: unknown, whatever the field holds
        known = " and ".join(_present(x) for x in reads) or None
        return _Code(known, self._compare(node.op, a, b, node.right if not b_field else None), reads)

    def _compare(self, op: str, a: str, b: str, const: ast.Operand | None) -> str:
        """``a op b`` on present values, as :func:`compare_values` (inline for a string or number constant)."""
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


def _written(x: ast.Operand) -> str:
    return str(x) if isinstance(x, ast.Path) else json.dumps(x.value, ensure_ascii=False)


def _null_warning(node: ast.Compare | ast.StringOp, ctx: Ctx) -> None:
    field = next((x for x in (node.left, node.right) if isinstance(x, ast.Path)), None)
    written = f"{_written(node.left)} {node.op} {_written(node.right)}"
    fix = f"; write `{field} {'exists' if node.op == '!=' else 'does not exist'}`" if field and node.op in ("==", "!=") else ""
    ctx.error(node, f"`{written}` is never true: null counts as missing{fix}", "warning")
