"""Rule text -> syntax tree (:mod:`rules.ast`), with errors as ``file:line:col: message``.

The grammar lives in ``grammar.lark`` (LALR). A file is parsed one rule at a
time (a rule starts at a line beginning with ``rule``), so one typo costs one
rule, and every rule after it is still checked. Syntax errors get a message
written for people (``match_examples`` labels the common mistakes, the rest say
what was expected), always with the line and column of the offending text.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast
from .errors import Diagnostic

MAX_NESTING = 32  # parentheses / brackets / braces deep; deeper is certainly a mistake
MAX_RULE_CHARS = 64_000

_RULE_START = re.compile(r"^[ \t]*rule\b(?![ \t]*:)", re.M)  # `rule: x` is a payload key, not a rule
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)")

_FRIENDLY = {
    "DURATION": "a duration such as 30s or 10m",
    "INT": "a whole number",
    "NUMBER": "a number",
    "STRING": 'a "quoted string"',
    "NAME": "a name",
    "PSEUDO": "$page / $screen / $identify",
    "COMPOP": "a comparison (== != < <= > >=)",
    "$END": "the end of the file",
}

_DURATION_LABEL = "a duration needs a unit: ms, s, m, h or d (e.g. 30s)"
_WORD_UNITS = {"sec": "s", "secs": "s", "second": "s", "seconds": "s", "min": "m", "mins": "m", "minute": "m",
               "minutes": "m", "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "day": "d", "days": "d",
               "msec": "ms", "millis": "ms", "milliseconds": "ms"}


def _duration_hint(rest: str) -> str | None:
    """What is wrong with a duration as written (``rest``: the text from where it starts)."""
    word = re.match(r"-?[0-9.]+(?:[ \t]*[A-Za-z]+)?(?:[0-9]+[A-Za-z]+)*", rest)
    if word is None:
        return None
    w = word.group(0)
    parts = re.findall(r"([0-9]+)(ms|s|m|h|d)", w)
    if len(parts) > 1 and "".join(n + u for n, u in parts) == w:
        total = sum(int(n) * _UNITS_MS[u] for n, u in parts)
        unit = next(u for u in ("d", "h", "m", "s", "ms") if total % _UNITS_MS[u] == 0)
        return f"one number and one unit per duration: write {total // _UNITS_MS[unit]}{unit}, not {w}"
    if w.startswith("-"):
        return f"a duration must be more than zero (found '{w}')"
    m = re.fullmatch(r"([0-9]+\.[0-9]+)[ \t]*([A-Za-z]*)", w)
    if m:
        unit = _WORD_UNITS.get(m.group(2).lower(), m.group(2).lower())
        ms = float(m.group(1)) * _UNITS_MS.get(unit, 0)
        better = next((f"{int(ms) // _UNITS_MS[u]}{u}" for u in ("d", "h", "m", "s", "ms")
                       if ms >= 1 and ms.is_integer() and int(ms) % _UNITS_MS[u] == 0), None)
        fix = f"write {better}" if better else "ms, s, m, h or d, e.g. 30s"
        return f"a duration is a whole number and a unit: {fix} (found '{w}')"
    m = re.fullmatch(r"([0-9]+)([ \t]*)([A-Za-z]+)", w)
    if m:
        n, space, unit = m.groups()
        fix = unit if unit in _UNITS_MS else _WORD_UNITS.get(unit.lower()) or (unit.lower() if unit.lower() in _UNITS_MS else None)
        if unit.lower() in ("w", "wk", "week", "weeks"):
            return f"there is no week unit: write {int(n) * 7}d (found '{w}')"
        if fix is not None and (space or fix != unit):
            return f"write {n}{fix} (found '{w}'; units are ms, s, m, h and d, right after the number)"
        if fix is None:
            return f"unknown unit '{unit}': use ms, s, m, h or d, e.g. 30s (found '{w}')"
    return None


# Common mistakes, labelled (lark's match_examples compares parser states).
_EXAMPLES: dict[str, list[str]] = {
    'a rule name must be a quoted string, e.g. rule "abandoned cart"': [
        "rule abandoned", "rule 1", "rule when",
    ],
    "a rule starts with `when <Event>` after its name": [
        'rule "x" then A', 'rule "x" post crm', 'rule "x" A', 'rule "x" no A',
    ],
    _DURATION_LABEL: [
        'rule "x" when A then B within 30', 'rule "x" when 3 A within 10 post c',
        'rule "x" when A then no B within x', 'rule "x" when A at most once per 3',
        'rule "x" when A then B within 30 post c',
    ],
    "a comparison needs a value on its right, e.g. properties.price >= 20": [
        'rule "x" when A where properties.a ==', 'rule "x" when A where properties.a == post',
        'rule "x" when A where properties.a >= within',
    ],
    "expected a condition after `where`, e.g. where properties.price >= 20": [
        'rule "x" when A where', 'rule "x" when A where post', 'rule "x" when A where within 1s',
        'rule "x" when A where then',
    ],
    "a field must be compared: add == value, in [...], contains, starts with, ends with or exists": [
        'rule "x" when A where properties.a post', 'rule "x" when A where properties.a then',
        'rule "x" when A where properties.a within', 'rule "x" when A where properties.a and',
        'rule "x" when A where properties.a )',
    ],
    "`at most` needs a frequency: at most once per 24h, at most twice per 1d or at most 3 times per 1h": [
        'rule "x" when A at most per 1h', 'rule "x" when A at most 3 per 1h', 'rule "x" when A at once',
        'rule "x" when A at most', 'rule "x" when A at post',
    ],
    "`post` needs an endpoint name from the config, e.g. post crm": [
        'rule "x" when A post', 'rule "x" when A post "crm"', 'rule "x" when A post {',
    ],
    "an absence takes no count: `then no Checkout within 30s` (no Checkout at all)": [
        'rule "x" when A then no 2', 'rule "x" when A then no 2 B within 1m',
    ],
    "an event name is expected here (a name, a \"quoted name\" or $page)": [
        'rule "x" when', 'rule "x" when A then', 'rule "x" when A then no', 'rule "x" when 3',
        'rule "x" when A then 3 within', 'rule "x" when where',
    ],
    "a payload template is written { field: value, ... }": [
        'rule "x" when A post crm with', 'rule "x" when A post crm with x', 'rule "x" when A post crm with {a}',
        'rule "x" when A post crm with {a:}', 'rule "x" when A post crm with {a: 1 b: 2}',
    ],
}


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _describe_expected(expected: set[str] | frozenset[str]) -> str:
    parser = _lark()
    names = []
    for name in sorted(expected):
        if name in _FRIENDLY:
            names.append(_FRIENDLY[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            names.append(name.lower())
            continue
        names.append(f"`{pattern.value}`" if pattern.type == "str" else name.lower())
    names = sorted(set(names))
    if len(names) > 8:
        names = names[:8] + ["..."]
    return ", ".join(names)


def _did_you_mean(token: Token, expected: set[str] | frozenset[str]) -> str | None:
    """The keyword a misspelt name was probably meant to be (`thn` -> `then`, `wihtin` -> `within`)."""
    if token.type != "NAME" or len(token) < 3:  # `B` is an event name, not a misspelt `by`
        return None
    words = []
    parser = _lark()
    for name in expected:
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            continue
        if pattern.type == "str" and pattern.value.isalpha():
            words.append(pattern.value)
    close = difflib.get_close_matches(str(token).lower(), words, n=1, cutoff=0.6)
    return close[0] if close else None


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    text = str(token)
    if len(text) > 30:
        text = text[:30] + "..."
    return f"'{text}'"


def _syntax_diagnostic(exc: UnexpectedInput, text: str, filename: str, lines: list[str]) -> Diagnostic:
    line, column = exc.line, exc.column
    if isinstance(exc, UnexpectedEOF) or line is None or line < 1:
        # Point just past the last non-blank character of the chunk.
        stripped = text.rstrip()
        line = stripped.count("\n") + 1
        column = len(stripped) - (stripped.rfind("\n") + 1) + 1
    message = None
    try:
        label = exc.match_examples(_lark().parse, _EXAMPLES, use_accepts=True)
    except Exception:  # noqa: BLE001 - labelling is best effort; the generic message follows
        label = None
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        if char == "=":
            message = "`=` is not a comparison; use `==`"
        elif char == "'":
            message = "strings are written in double quotes: \"like this\""
        elif char == '"':
            message = "this string is not closed on its line (missing \")"
        elif not char.isascii() and char.isalpha():
            message = (f"unexpected character {char!r}: names without quotes are ASCII letters, digits and _; "
                       'quote the name: when "Añadir al carrito", properties."precio €"')
        else:
            message = f"unexpected character {char!r}"
            if exc.allowed:
                message += f"; expected {_describe_expected(exc.allowed)}"
        if label and not (not char.isascii() and char.isalpha()):
            message = f"{message} ({label})" if char in "='\"" else label
    elif isinstance(exc, UnexpectedToken):
        found = _token_text(exc.token)
        expected = _describe_expected(exc.expected)
        message = label or (f"the rule ends too early; expected {expected}" if exc.token.type == "$END"
                            else f"unexpected {found}; expected {expected}")
        if label:
            message = f"{label} (found {found})"
        if label == _DURATION_LABEL and exc.token.start_pos is not None:
            message = _duration_hint(text[exc.token.start_pos :]) or message
        hint = _did_you_mean(exc.token, exc.expected)
        if hint:
            message += f"; did you mean `{hint}`?"
        if exc.token.start_pos is not None:
            # `where` at the end of a line, the next clause read as the field to test: `where then no B`
            bare = re.search(r"\bwhere\s+(then|post|within|by|at)\s*\Z", text[: exc.token.start_pos])
            if bare:
                message = f"the condition after `where` is missing (`{bare.group(1)}` is a keyword, not a field)"
                line, column = _line_col(text, bare.start())
    else:
        message = label or f"the rule ends too early; expected {_describe_expected(getattr(exc, 'expected', set()))}"
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    return Diagnostic(filename, line, max(1, column), message, "error", source)


def _check_nesting(chunk: str, first_line: int, filename: str, lines: list[str]) -> Diagnostic | None:
    depth = 0
    line, col = first_line, 1
    in_string = False
    escaped = False
    for ch in chunk:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"' or ch == "\n":
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                source = lines[line - 1] if line <= len(lines) else ""
                return Diagnostic(filename, line, col, f"nested more than {MAX_NESTING} levels deep", "error", source)
        elif ch in ")]}":
            depth -= 1
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
    return None


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
        deep = _check_nesting(chunk, first_line, filename, lines)
        if deep is not None:
            diagnostics.append(deep)
            continue
        try:
            tree = _lark().parse(padded)
            rules.extend(_Builder(padded).transform(tree))
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(exc, padded, filename, lines))
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
    m = _DURATION.fullmatch(str(token))
    assert m is not None  # the grammar's DURATION terminal guarantees the shape
    return ast.Duration(token.line or 1, token.column or 1, int(m.group(1)) * _UNITS_MS[m.group(2)], str(token))


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
