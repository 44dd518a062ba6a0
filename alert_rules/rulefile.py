"""Prometheus rule files written from Python: :class:`Record` and :class:`Alert` rules in :class:`Group` s, and
:func:`render`, the YAML text of a whole file.

Only the standard library, so ``spendwatch assets`` can render the alerts from an installed wheel. The text keeps the
hand-written layout people read: a comment above a rule, a multi-line ``expr`` as a literal block, a description as
a folded block whose lines YAML joins with single spaces.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Alert", "Group", "Record", "render", "runbook_url", "scalar", "section"]

INDENT = "  "
# The repository's line length (ruff's), which comments are wrapped to.
LINE_LENGTH = 120
# A value YAML reads back as this very string when written bare; anything else is written as a JSON string, which is
# also a double-quoted YAML string.
_PLAIN = re.compile(r"[A-Za-z_:][^\n]*[^\s:]|[A-Za-z_]|[0-9]+[smhdwy]")
_NOT_PLAIN = re.compile(r": |\s#|^(true|false|yes|no|on|off|null)$", re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    """A recording rule, with ``comment`` written above it (see :func:`render`)."""

    record: str
    expr: str
    comment: str = ""


@dataclass(frozen=True)
class Alert:
    """An alerting rule with a ``severity`` label and the summary, description and runbook_url annotations.

    ``description`` is the lines of a folded block: Prometheus sees them joined with single spaces. The runbook_url
    is :func:`runbook_url` of the alert's name.
    """

    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: Sequence[str]
    comment: str = ""


@dataclass(frozen=True)
class Group:
    name: str
    rules: Sequence[Record | Alert]


def runbook_url(alert: str, base: str) -> str:
    """``base#<alert>``: the runbook section of ``alert``, by the anchor GitHub gives its ``## <alert>`` heading."""
    return f"{base.rstrip('#')}#{alert.lower()}"


def render(header: str, groups: Sequence[Group], runbook_base: str = "") -> str:
    """The rule file: ``header`` as a comment, then the groups, a blank line between two; each alert's runbook_url
    is its section under ``runbook_base`` (a file of recording rules only needs none).

    A comment (the header, a rule's ``comment``) keeps its line breaks, and each line is wrapped to the line length
    (an empty line is a ``#`` alone). A rule with a comment starts a new paragraph of the file, so a blank line comes
    before it unless it is the first of its group.
    """
    lines = [*_comment(header, 0), "groups:"]
    for number, group in enumerate(groups):
        if number:
            lines.append("")
        lines += [f"{INDENT}- name: {scalar(group.name)}", f"{INDENT * 2}rules:"]
        for position, rule in enumerate(group.rules):
            if rule.comment and position:
                lines.append("")
            lines += _comment(rule.comment, 3)
            lines += _record(rule) if isinstance(rule, Record) else _alert(rule, runbook_base)
    return "\n".join(lines) + "\n"


def section(title: str) -> str:
    """A comment line opening a section of a group's rules, ruled to the line length."""
    return f"--- {title} ".ljust(LINE_LENGTH - len(f"{INDENT * 3}# "), "-")


def scalar(value: str) -> str:
    """``value`` as a one-line YAML string: bare when YAML reads it back unchanged, else double-quoted."""
    if _PLAIN.fullmatch(value) and not _NOT_PLAIN.search(value):
        return value
    return json.dumps(value)


def _record(rule: Record) -> list[str]:
    return [f"{INDENT * 3}- record: {scalar(rule.record)}", *_expr(rule.expr)]


def _alert(rule: Alert, runbook_base: str) -> list[str]:
    key = INDENT * 4
    return [
        f"{INDENT * 3}- alert: {scalar(rule.alert)}",
        *_expr(rule.expr),
        f"{key}for: {scalar(rule.for_)}",
        f"{key}labels:",
        f"{key}{INDENT}severity: {scalar(rule.severity)}",
        f"{key}annotations:",
        f"{key}{INDENT}summary: {scalar(rule.summary)}",
        f"{key}{INDENT}description: >-",
        *_block(rule.description, 6),
        f"{key}{INDENT}runbook_url: {scalar(runbook_url(rule.alert, runbook_base))}",
    ]


def _expr(expr: str) -> list[str]:
    """A one-line expression bare; a longer one as a literal block (Prometheus reads it with a final newline)."""
    if "\n" not in expr:
        return [f"{INDENT * 4}expr: {scalar(expr)}"]
    return [f"{INDENT * 4}expr: |", *_block(expr.splitlines(), 5, folded=False)]


def _block(lines: Sequence[str], depth: int, *, folded: bool = True) -> list[str]:
    """``lines`` indented under a block scalar's key, refusing any line YAML would not read back as written."""
    # The first line sets the block's indentation, so a space there would be lost; a folded block keeps a line that
    # starts with a space on its own, and ends a paragraph at an empty line.
    starts_with_space = [line[:1].isspace() for line in lines]
    if (
        not lines
        or starts_with_space[0]
        or (folded and any(starts_with_space))
        or any(not line.strip() or line[-1].isspace() for line in lines)
    ):
        raise ValueError(f"a YAML block cannot hold these lines as written: {list(lines)!r}")
    return [f"{INDENT * depth}{line}" for line in lines]


def _comment(text: str, depth: int) -> list[str]:
    prefix = f"{INDENT * depth}# "
    lines = []
    for line in text.split("\n") if text else ():
        wrapped = textwrap.wrap(
            line,
            LINE_LENGTH,
            initial_indent=prefix,
            subsequent_indent=prefix,
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines += wrapped or [prefix.rstrip()]
    return lines
