"""Rule text -> syntax tree (:mod:`rules.ast`), with errors as ``file:line:col: message``.

The grammar lives in ``grammar.lark`` (LALR). A file is parsed one rule at a
time (a rule starts at a line beginning with ``rule``), so one typo costs one
rule, and every rule after it is still checked. Syntax errors get a message
written for people (:mod:`rules.syntax_errors`), always with the line and column
of the offending text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lark import Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedInput, VisitError

from . import ast
from .errors import Diagnostic
from .grammar import DURATION, UNITS_MS, lark_parser
from .syntax_errors import check_nesting, syntax_diagnostic

MAX_RULE_CHARS = 64_000

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
            rules.extend(_Builder(padded).transform(tree))
        except UnexpectedInput as exc:
            diagnostics.append(syntax_diagnostic(exc, padded, filename, lines))
        except VisitError as exc:
            orig = exc.orig_exc
            if isinstance(orig, _BuildError):
                diagnostics.append(Diagnostic(filename, orig.line, orig.column, orig.message, "error", lines[orig.line - 1] if orig.line <= len(lines) else ""))
            else:
                raise
    return ast.RuleFile(filename, tuple(rules)), diagnostics


class _BuildError(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


def _string(token: Token) -> str:
    try:
        value = json.loads(str(token))
    except ValueError:
        raise _BuildError(token.line or 1, token.column or 1, "this string has an invalid escape sequence") from None
    return value


def _duration(token: Token) -> ast.Duration:
    m = DURATION.fullmatch(str(token))
    assert m is not None  # the grammar's DURATION terminal guarantees the shape
    return ast.Duration(token.line or 1, token.column or 1, int(m.group(1)) * UNITS_MS[m.group(2)], str(token))


def _pos(meta: Any, fallback: Token | None = None) -> tuple[int, int]:
    if getattr(meta, "empty", True):
        if fallback is not None:
            return fallback.line or 1, fallback.column or 1
        return 1, 1
    return meta.line, meta.column


@v_args(meta=True)
class _Builder(Transformer):  # type: ignore[type-arg]
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
            body.get("within"), absent, body.get("count_pos"), body.get("alias_pos"),
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
            if kind in ("count", "alias"):
                body[f"{kind}_pos"] = pos
        return body

    def count(self, meta: Any, children: list[Token]) -> tuple[str, int, ast.Node]:
        tok = children[0]
        return ("count", int(tok), ast.Node(tok.line or 1, tok.column or 1))

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
        return int(children[0])

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

    def list(self, meta: Any, c: list[Any]) -> tuple[ast.Literal, ...]:
        return tuple(x for x in c if x is not None)

    def string(self, meta: Any, c: list[Token]) -> ast.Literal:
        return ast.Literal(*_pos(meta, c[0]), _string(c[0]))

    def number(self, meta: Any, c: list[Token]) -> ast.Literal:
        text = str(c[0])
        value: int | float = float(text) if any(ch in text for ch in ".eE") else int(text)
        return ast.Literal(*_pos(meta, c[0]), value)

    def true(self, meta: Any, c: list[Any]) -> ast.Literal:
        return ast.Literal(*_pos(meta), True)

    def false(self, meta: Any, c: list[Any]) -> ast.Literal:
        return ast.Literal(*_pos(meta), False)

    def null(self, meta: Any, c: list[Any]) -> ast.Literal:
        return ast.Literal(*_pos(meta), None)

    # templates
    def object(self, meta: Any, c: list[Any]) -> ast.TemplateObject:
        return ast.TemplateObject(*_pos(meta), tuple(x for x in c if x is not None))

    def pair(self, meta: Any, c: list[Any]) -> tuple[str, Any]:
        tok, value = c
        return (_string(tok) if tok.type == "STRING" else str(tok), value)

    def array(self, meta: Any, c: list[Any]) -> ast.TemplateArray:
        return ast.TemplateArray(*_pos(meta), tuple(x for x in c if x is not None))


def _unused(tree: Tree) -> None:  # pragma: no cover - keeps Tree imported for type readers
    del tree
