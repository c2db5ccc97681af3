"""Rule text -> syntax tree (:mod:`rules.ast`), with errors as ``file:line:col: message``.

The grammar lives in ``grammar.lark`` (LALR). A file is parsed one rule at a
time (a rule starts at a line beginning with ``rule``), so one typo costs one
rule, and every rule after it is still checked. Syntax errors get a message
written for people (:mod:`rules.syntax_errors`), always with the line and column
of the offending text.

What parses but the engine or the trigger encoder (orjson) could not carry is
refused here too, at the offending text: integers outside 64 bits, numbers too
large for a float, strings holding half of a UTF-16 surrogate pair (``"\\ud800"``),
conditions with more and/or/not than :data:`MAX_CONDITION_OPS`. No input makes
:func:`parse_text` raise.
"""

from __future__ import annotations

import builtins
import json
import math
import re
from typing import Any

from lark import Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedInput, VisitError

from . import ast
from .errors import Diagnostic
from .grammar import DURATION, UNITS_MS, lark_parser
from .syntax_errors import check_nesting, syntax_diagnostic

MAX_RULE_CHARS = 64_000
MAX_CONDITION_OPS = 100  # and/or/not in one `where`; the syntax tree is as deep, and compiling it recurses
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what orjson (the trigger encoder) writes
_MAX_WHOLE_DIGITS = 18  # counts, `times` and durations: more is certainly a mistake (and int() stops at 4,300)

_RULE_START = re.compile(r"^[ \t]*rule\b(?![ \t]*:)", re.M)  # `rule: x` is a payload key, not a rule


def decode_rules(data: bytes, filename: str) -> tuple[str | None, Diagnostic | None]:
    """A rule file's bytes as text: UTF-8, a leading byte-order mark dropped (Windows editors write one).

    Not UTF-8: (None, a diagnostic at the first bad byte). ``rules check`` and the running engine
    both read files through this, so a file check rejects never runs half-decoded.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\0" in data:  # no text file holds a NUL byte
        return None, Diagnostic(filename, 1, 1, "the file is binary, not rule text")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        head = data[: exc.start]
        line = head.count(b"\n") + 1
        start = head.rfind(b"\n") + 1
        column = len(head[start:].decode("utf-8", "replace")) + 1
        source = data[start:].split(b"\n", 1)[0].decode("utf-8", "replace")
        message = f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8"
        return None, Diagnostic(filename, line, column, message, "error", source)


def parse_text(text: str, filename: str = "<rules>") -> tuple[ast.RuleFile, list[Diagnostic]]:
    """Parse a whole file. Returns the rules that parsed and a diagnostic per broken rule."""
    lines = text.split("\n")
    starts = [m.start() for m in _RULE_START.finditer(text)]
    bounds = sorted({0, *starts, len(text)})
    rules: list[ast.Rule] = []
    diagnostics: list[Diagnostic] = []
    for a, b in zip(bounds, bounds[1:]):
        chunk = text[a:b]
        if not chunk.strip():
            continue
        first_line = text.count("\n", 0, a) + 1
        padded = "\n" * (first_line - 1) + chunk  # keeps line numbers of the whole file
        if len(chunk) > MAX_RULE_CHARS:
            diagnostics.append(Diagnostic(filename, first_line, 1, f"rule longer than {MAX_RULE_CHARS} characters", "error", lines[first_line - 1]))
            continue
        deep = check_nesting(chunk, first_line, filename, lines)
        if deep is not None:
            diagnostics.append(deep)
            continue
        try:
            tree = lark_parser().parse(padded)
            _check_conditions(tree)
            rules.extend(_Builder(padded).transform(tree))
        except UnexpectedInput as exc:
            diagnostics.append(syntax_diagnostic(exc, padded, filename, lines))
        except (VisitError, _BuildError) as exc:
            orig = exc.orig_exc if isinstance(exc, VisitError) else exc
            if not isinstance(orig, _BuildError):  # a bug of ours: still one rule's error, never a traceback
                orig = _BuildError(first_line, 1, f"this rule could not be compiled ({type(orig).__name__}: {orig})"[:300])
            source = lines[orig.line - 1] if orig.line <= len(lines) else ""
            diagnostics.append(Diagnostic(filename, orig.line, orig.column, orig.message, "error", source))
    return ast.RuleFile(filename, tuple(rules)), diagnostics


class _BuildError(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


_OPS = frozenset({"or_expr", "and_expr", "not_expr"})


def _check_conditions(tree: Tree[Token]) -> None:
    """Refuse a `where` with more and/or/not than MAX_CONDITION_OPS (iteratively: no recursion yet)."""
    for where in tree.find_data("where"):
        ops = sum(1 for t in where.iter_subtrees() if t.data in _OPS)
        if ops > MAX_CONDITION_OPS:
            meta = where.children[0].meta if isinstance(where.children[0], Tree) else where.meta
            raise _BuildError(meta.line, meta.column, f"this condition has {ops} and/or/not; at most {MAX_CONDITION_OPS} "
                              "are allowed (many values of one field: `in [...]`)")


def _shown(text: str) -> str:
    """A number as written, shortened when it is long (a 5,000-digit literal is not echoed whole)."""
    return text if len(text) <= 30 else f"{text[:20]}... ({sum(c.isdigit() for c in text)} digits)"


_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def _string(token: Token) -> str:
    line, column = token.line or 1, token.column or 1
    try:
        value: str = json.loads(str(token))
    except ValueError:
        raise _BuildError(line, column, "this string has an invalid escape sequence") from None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # json.loads joins an escaped pair (\ud83d\ude00 is one character); a half left alone is
        # no character: orjson (triggers) and UTF-8 (logs, state) cannot write it.
        bad = ord(value[exc.start])
        where = next((m for m in _ESCAPE.finditer(str(token)) if int(m.group(1), 16) == bad), None)
        written = where.group(0) if where else f"\\u{bad:04x}"
        raise _BuildError(line, column + (where.start() if where else 0), (
            f'"{written}" is half of a UTF-16 surrogate pair, not a character: write the character itself, '
            'or both halves ("\\ud83d\\ude00")')) from None
    return value


def _whole(text: str, line: int, column: int) -> int:
    """A count, `times` or a duration's number: a whole number with at most 18 significant digits."""
    if len(text.lstrip("0")) > _MAX_WHOLE_DIGITS:
        raise _BuildError(line, column, f"the number {_shown(text)} is too large")
    return int(text)


def _number(token: Token) -> int | float:
    """A number literal, refused where the trigger encoder (orjson) could not write it."""
    text, line, column = str(token), token.line or 1, token.column or 1
    if any(ch in text for ch in ".eE"):
        decimal = float(text)  # float() has no digit limit; too large is inf
        if not math.isfinite(decimal):
            raise _BuildError(line, column, f"the number {_shown(text)} is too large (the largest is about 1.8e308)")
        return decimal
    digits = text.lstrip("-").lstrip("0")
    value = int(text) if len(digits) <= 20 else None  # int() of 4,300+ digits raises; 21+ are out of range anyway
    if value is None or not INT_MIN <= value <= INT_MAX:
        raise _BuildError(line, column, (
            f"the integer {_shown(text)} is outside the 64-bit range that webhooks carry ({INT_MIN} to {INT_MAX}); "
            "write it with a decimal point or exponent (1.5e30) if an approximate value will do"))
    return value


def _duration(token: Token) -> ast.Duration:
    m = DURATION.fullmatch(str(token))
    assert m is not None  # the grammar's DURATION terminal guarantees the shape
    line, column = token.line or 1, token.column or 1
    return ast.Duration(line, column, _whole(m.group(1), line, column) * UNITS_MS[m.group(2)], str(token))


def _pos(meta: Any, fallback: Token | None = None) -> tuple[int, int]:
    if getattr(meta, "empty", True):
        if fallback is not None:
            return fallback.line or 1, fallback.column or 1
        return 1, 1
    return meta.line, meta.column


@v_args(meta=True)
class _Builder(Transformer[Token, Any]):
    """Lark tree -> ast nodes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self._text = text

    def start(self, meta: Any, rules: list[ast.Rule]) -> list[ast.Rule]:
        return list(rules)

    def rule(self, meta: Any, children: list[Any]) -> ast.Rule:
        name_tok, *rest = children
        steps = tuple(c for c in rest if isinstance(c, ast.Step))
        clauses = tuple(c for c in rest if not isinstance(c, ast.Step))
        source = self._text[meta.start_pos : meta.end_pos]
        return ast.Rule(meta.line, meta.column, _string(name_tok), steps, clauses, source)

    def _step(self, meta: Any, keyword: str, body: dict[str, Any], absent: bool) -> ast.Step:
        line, col = _pos(meta)
        return ast.Step(
            line, col, keyword, body["event"], body.get("count", 1), body.get("alias"), body.get("where"),
            body.get("within"), absent, body.get("count_pos"), body.get("alias_pos"), body.get("event_pos"),
        )

    def when_step(self, meta: Any, children: list[Any]) -> ast.Step:
        return self._step(meta, "when", children[0], False)

    def then_step(self, meta: Any, children: list[Any]) -> ast.Step:
        return self._step(meta, "then", children[0], False)

    def absence_step(self, meta: Any, children: list[Any]) -> ast.Step:
        return self._step(meta, "then", self.step_body(meta, children), True)

    def step_body(self, meta: Any, children: list[Any]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for kind, value, pos in children:
            body[kind] = value
            if kind in ("count", "alias", "event"):
                body[f"{kind}_pos"] = pos
        return body

    def count(self, meta: Any, children: list[Token]) -> tuple[str, int, ast.Node]:
        tok = children[0]
        line, column = tok.line or 1, tok.column or 1
        return ("count", _whole(str(tok), line, column), ast.Node(line, column))

    def event_name(self, meta: Any, children: list[Token]) -> tuple[str, str, ast.Node]:
        tok = children[0]
        name = _string(tok) if tok.type == "STRING" else str(tok)
        return ("event", name, ast.Node(tok.line or 1, tok.column or 1))

    def alias(self, meta: Any, children: list[Token]) -> tuple[str, str, ast.Node]:
        tok = children[0]
        return ("alias", str(tok), ast.Node(tok.line or 1, tok.column or 1))

    def where(self, meta: Any, children: list[Any]) -> tuple[str, Any, None]:
        return ("where", children[0], None)

    def within(self, meta: Any, children: list[Token]) -> tuple[str, ast.Duration, None]:
        return ("within", _duration(children[0]), None)

    # clauses
    def by_clause(self, meta: Any, children: list[Any]) -> ast.By:
        return ast.By(*_pos(meta), children[0])

    def cap_clause(self, meta: Any, children: list[Any]) -> ast.Cap:
        times, per = children
        return ast.Cap(*_pos(meta), times, _duration(per))

    def once(self, meta: Any, children: list[Any]) -> int:
        return 1

    def twice(self, meta: Any, children: list[Any]) -> int:
        return 2

    def times(self, meta: Any, children: list[Token]) -> int:
        tok = children[0]
        return _whole(str(tok), tok.line or 1, tok.column or 1)

    def post_clause(self, meta: Any, children: list[Any]) -> ast.Post:
        payload = children[1] if len(children) > 1 else None
        return ast.Post(*_pos(meta), str(children[0]), payload)

    # predicates
    def or_expr(self, meta: Any, c: list[Any]) -> ast.Or:
        return ast.Or(*_pos(meta), c[0], c[1])

    def and_expr(self, meta: Any, c: list[Any]) -> ast.And:
        return ast.And(*_pos(meta), c[0], c[1])

    def not_expr(self, meta: Any, c: list[Any]) -> ast.Not:
        return ast.Not(*_pos(meta), c[0])

    def compare(self, meta: Any, c: list[Any]) -> ast.Compare:
        return ast.Compare(*_pos(meta), str(c[1]), c[0], c[2])

    def in_list(self, meta: Any, c: list[Any]) -> ast.InList:
        return ast.InList(*_pos(meta), c[0], c[1], False)

    def not_in_list(self, meta: Any, c: list[Any]) -> ast.InList:
        return ast.InList(*_pos(meta), c[0], c[1], True)

    def contains(self, meta: Any, c: list[Any]) -> ast.StringOp:
        return ast.StringOp(*_pos(meta), "contains", c[0], c[1])

    def starts_with(self, meta: Any, c: list[Any]) -> ast.StringOp:
        return ast.StringOp(*_pos(meta), "starts with", c[0], c[1])

    def ends_with(self, meta: Any, c: list[Any]) -> ast.StringOp:
        return ast.StringOp(*_pos(meta), "ends with", c[0], c[1])

    def exists(self, meta: Any, c: list[Any]) -> ast.Exists:
        return ast.Exists(*_pos(meta), c[0], False)

    def not_exists(self, meta: Any, c: list[Any]) -> ast.Exists:
        return ast.Exists(*_pos(meta), c[0], True)

    def path(self, meta: Any, c: list[Token]) -> ast.Path:
        return ast.Path(*_pos(meta, c[0]), tuple(_string(t) if t.type == "STRING" else str(t) for t in c))

    # named after the grammar's rule: below it, the builtin is builtins.list
    def list(self, meta: Any, c: list[Any]) -> tuple[ast.Literal, ...]:
        return tuple(x for x in c if x is not None)

    def string(self, meta: Any, c: builtins.list[Token]) -> ast.Literal:
        return ast.Literal(*_pos(meta, c[0]), _string(c[0]))

    def number(self, meta: Any, c: builtins.list[Token]) -> ast.Literal:
        return ast.Literal(*_pos(meta, c[0]), _number(c[0]))

    def true(self, meta: Any, c: builtins.list[Any]) -> ast.Literal:
        return ast.Literal(*_pos(meta), True)

    def false(self, meta: Any, c: builtins.list[Any]) -> ast.Literal:
        return ast.Literal(*_pos(meta), False)

    def null(self, meta: Any, c: builtins.list[Any]) -> ast.Literal:
        return ast.Literal(*_pos(meta), None)

    # templates
    def object(self, meta: Any, c: builtins.list[Any]) -> ast.TemplateObject:
        return ast.TemplateObject(*_pos(meta), tuple(x for x in c if x is not None))

    def pair(self, meta: Any, c: builtins.list[Any]) -> tuple[str, Any]:
        tok, value = c
        return (_string(tok) if tok.type == "STRING" else str(tok), value)

    def array(self, meta: Any, c: builtins.list[Any]) -> ast.TemplateArray:
        return ast.TemplateArray(*_pos(meta), tuple(x for x in c if x is not None))

