"""Syntax errors written for people: what was expected, the common mistakes labelled, a suggestion.

:func:`syntax_diagnostic` turns lark's error into a :class:`rules.errors.Diagnostic`
at the offending text (``match_examples`` labels the common mistakes, a misspelt
keyword gets "did you mean", a malformed duration the duration to write instead);
:func:`check_nesting` refuses brackets nested deeper than anyone writes.
"""

from __future__ import annotations

import difflib
import re

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .errors import Diagnostic
from .grammar import DURATION, RESERVED, UNITS_MS, lark_parser

MAX_NESTING = 32  # parentheses / brackets / braces deep; deeper is certainly a mistake

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


def _short(text: str) -> str:
    return text if len(text) <= 30 else text[:30] + "..."


def _duration_hint(rest: str) -> str | None:
    """What is wrong with a duration as written (``rest``: the text from where it starts)."""
    word = re.match(r"-?[0-9.]+(?:[ \t]*[A-Za-z]+)?(?:[0-9]+[A-Za-z]+)*", rest)
    if word is None:
        return None
    w = word.group(0)
    if any(len(n.lstrip("0")) > 18 for n in re.findall(r"[0-9]+", w)):  # and int() stops at 4,300 digits
        return f"this duration is too large (found '{_short(w)}')"
    parts = DURATION.findall(w)
    if len(parts) > 1 and "".join(n + u for n, u in parts) == w:
        total = sum(int(n) * UNITS_MS[u] for n, u in parts)
        unit = next(u for u in ("d", "h", "m", "s", "ms") if total % UNITS_MS[u] == 0)
        return f"one number and one unit per duration: write {total // UNITS_MS[unit]}{unit}, not {_short(w)}"
    if w.startswith("-"):
        return f"a duration must be more than zero (found '{_short(w)}')"
    m = re.fullmatch(r"([0-9]+\.[0-9]+)[ \t]*([A-Za-z]*)", w)
    if m:
        unit = _WORD_UNITS.get(m.group(2).lower(), m.group(2).lower())
        ms = float(m.group(1)) * UNITS_MS.get(unit, 0)
        better = next((f"{int(ms) // UNITS_MS[u]}{u}" for u in ("d", "h", "m", "s", "ms")
                       if ms >= 1 and ms.is_integer() and int(ms) % UNITS_MS[u] == 0), None)
        advice = f"write {better}" if better else "ms, s, m, h or d, e.g. 30s"
        return f"a duration is a whole number and a unit: {advice} (found '{_short(w)}')"
    m = re.fullmatch(r"([0-9]+)([ \t]*)([A-Za-z]+)", w)
    if m:
        n, space, unit = m.groups()
        known: str | None = unit if unit in UNITS_MS else (
            _WORD_UNITS.get(unit.lower()) or (unit.lower() if unit.lower() in UNITS_MS else None))
        if unit.lower() in ("w", "wk", "week", "weeks"):
            return f"there is no week unit: write {int(n) * 7}d (found '{_short(w)}')"
        if known is not None and (space or known != unit):
            return f"write {n}{known} (found '{_short(w)}'; units are ms, s, m, h and d, right after the number)"
        if known is None:
            return f"unknown unit '{_short(unit)}': use ms, s, m, h or d, e.g. 30s (found '{_short(w)}')"
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


def _describe_expected(expected: set[str] | frozenset[str]) -> str:
    parser = lark_parser()
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
    parser = lark_parser()
    for name in expected:
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            continue
        if pattern.type == "str" and pattern.value.isalpha():
            words.append(pattern.value)
    close = difflib.get_close_matches(str(token).lower(), words, n=1, cutoff=0.6)
    return close[0] if close else None


_STEP_HEAD = re.compile(r"\b(when|then[ \t]+no|then)\s+(?:([0-9]+)\s+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]+\Z")
_WORDS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[ \t]+[A-Za-z_][A-Za-z0-9_]*)*")


def _spaced_event(text: str, pos: int) -> tuple[int, str] | None:
    """`when Product Added`: (where the name starts, a hint to quote it), if ``pos`` is its second word."""
    head = _STEP_HEAD.search(text[:pos])
    words = _WORDS.match(text, pos)
    if head is None or words is None or head.group(3) in RESERVED:
        return None
    name = [head.group(3)]
    for word in words.group(0).split():
        if word in RESERVED:
            break
        name.append(word)
    keyword = " ".join(head.group(1).split())
    count = f"{head.group(2)} " if head.group(2) else ""
    return head.start(3), f'an event name with spaces is quoted: {keyword} {count}"{" ".join(name)}"'


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    text = str(token)
    if len(text) > 30:
        text = text[:30] + "..."
    return f"'{text}'"


def syntax_diagnostic(exc: UnexpectedInput, text: str, filename: str, lines: list[str]) -> Diagnostic:
    line, column = exc.line, exc.column
    if isinstance(exc, UnexpectedEOF) or line is None or line < 1:
        # Point just past the last non-blank character of the chunk.
        stripped = text.rstrip()
        line = stripped.count("\n") + 1
        column = len(stripped) - (stripped.rfind("\n") + 1) + 1
    message = None
    try:
        label = exc.match_examples(lark_parser().parse, _EXAMPLES, use_accepts=True)
    except Exception:  # noqa: BLE001 - labelling is best effort; the generic message follows
        label = None
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        char = text[pos] if pos is not None and pos < len(text) else ""
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
        elif exc.token.type == "NAME" and exc.token.start_pos is not None:
            spaced = _spaced_event(text, exc.token.start_pos)
            if spaced is not None:
                message = f"unexpected {found}: {spaced[1]}"
                line, column = _line_col(text, spaced[0])
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


def check_nesting(chunk: str, first_line: int, filename: str, lines: list[str]) -> Diagnostic | None:
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
