"""The rule language's syntax tree: frozen dataclasses, each node with its line and column.

Lines and columns are 1-based and point at the first character of the node in
its file, so every compiler error can name ``file:line:col``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Union

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z").match


@dataclass(frozen=True)
class Node:
    line: int
    column: int


# operands and predicates ------------------------------------------------------


@dataclass(frozen=True)
class Path(Node):
    parts: tuple[str, ...]

    def __str__(self) -> str:
        # as written: a part that is not a plain name was quoted (properties."Product Name")
        return ".".join(p if _NAME(p) else json.dumps(p, ensure_ascii=False) for p in self.parts)


@dataclass(frozen=True)
class Literal(Node):
    value: Any  # str, int, float, bool or None


Operand = Union[Path, Literal]


@dataclass(frozen=True)
class Compare(Node):
    op: str  # == != < <= > >=
    left: Operand
    right: Operand


@dataclass(frozen=True)
class InList(Node):
    operand: Operand
    values: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class StringOp(Node):
    op: str  # contains, starts with, ends with
    left: Operand
    right: Operand


@dataclass(frozen=True)
class Exists(Node):
    operand: Operand
    negated: bool


@dataclass(frozen=True)
class And(Node):
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or(Node):
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Not(Node):
    operand: Expr


Expr = Union[Compare, InList, StringOp, Exists, And, Or, Not]


# payload templates ------------------------------------------------------------


@dataclass(frozen=True)
class TemplateObject(Node):
    items: tuple[tuple[str, Template], ...]


@dataclass(frozen=True)
class TemplateArray(Node):
    items: tuple[Template, ...]


Template = Union[TemplateObject, TemplateArray, Path, Literal]


# rules --------------------------------------------------------------------------


@dataclass(frozen=True)
class Duration(Node):
    ms: int
    text: str


@dataclass(frozen=True)
class Step(Node):
    keyword: str  # "when" or "then"
    event: str  # track event name, or "$page", "$screen", "$identify", ...
    count: int  # 1 for a single event; "at least count" otherwise
    alias: str | None
    where: Expr | None
    within: Duration | None
    absent: bool  # "then no X"
    count_pos: Node | None = None  # where the count was written (for errors)
    alias_pos: Node | None = None
    event_pos: Node | None = None


@dataclass(frozen=True)
class By(Node):
    path: Path


@dataclass(frozen=True)
class Cap(Node):
    times: int
    per: Duration


@dataclass(frozen=True)
class Post(Node):
    endpoint: str
    payload: TemplateObject | None


Clause = Union[By, Cap, Post]


@dataclass(frozen=True)
class Rule(Node):
    name: str
    steps: tuple[Step, ...]
    clauses: tuple[Clause, ...]
    source: str  # the rule's text as written (for fingerprints and explain)


@dataclass(frozen=True)
class RuleFile:
    path: str
    rules: tuple[Rule, ...]
