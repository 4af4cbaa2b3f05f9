"""Reads the default mapping out of docs/mapping.md, so that tests are generated from the
documented tables instead of hand-copied rows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from tests.conftest import ROOT

MAPPING_MD = ROOT / "docs" / "mapping.md"
KEEP = "\u2013"  # the table's en dash: "keeps the current value"
FLAGS = ("provision", "suspend", "activate", "enable")


@dataclass(frozen=True)
class OutboundRow:
    state: str
    flags: dict[str, str | None]  # None keeps the current value
    message: str | None
    response: str | None


def _section(number: int) -> str:
    text = MAPPING_MD.read_text(encoding="utf-8")
    match = re.search(rf"^## {number}\..*?(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"docs/mapping.md has no section {number}"
    return match.group(0)


def _rows(block: str) -> list[list[str]]:
    rows = []
    for line in block.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


@cache
def outbound_rows() -> dict[str, list[OutboundRow]]:
    """{'order': [...], 'subscription': [...]} from the two tables of section 2."""
    out: dict[str, list[OutboundRow]] = {}
    for table in re.split(r"\n\n", _section(2)):
        rows = _rows(table)
        if not rows:
            continue
        vocabulary = {"order state": "order", "subscription status": "subscription"}[rows[0][0]]
        parsed = []
        for cells in rows[1:]:
            states, *flags, message, response = cells
            for state in (s.strip() for s in states.split(",")):
                parsed.append(OutboundRow(
                    state,
                    {f: (None if v == KEEP else v) for f, v in zip(FLAGS, flags, strict=True)},
                    None if message == "none" else message,
                    response or None))
        out[vocabulary] = parsed
    return out


@cache
def inbound_rules() -> list[tuple[str, str | None, str | None]]:
    """(rule text, order state, subscription status) from section 3, first match wins."""
    rules = []
    for rule, order, subscription in _rows(_section(3))[1:]:
        rules.append((rule, None if order == "(no change)" else order,
                      None if subscription == "(no change)" else subscription))
    return rules


@cache
def graphs() -> dict[str, tuple[dict[str, set[str]], set[str]]]:
    """{'order': (transitions, initial states), ...} from the prose of section 4."""
    text = " ".join(_section(4).split())
    out = {}
    for vocabulary, stop in (("order", "subscription:"), ("subscription", None)):
        start = text.index(f" {vocabulary}: ") + len(vocabulary) + 3
        body = text[start: text.index(stop, start) if stop else None]
        body = re.sub(r"\([^)]*\)", "", body)
        graph_text, initial_text = body.split(": final.")
        finals_and_rest = graph_text.split(" · ")
        graph: dict[str, set[str]] = {}
        for part in finals_and_rest[:-1]:
            sources, targets = part.split("->")
            for source in sources.split(","):
                graph.setdefault(source.strip(), set()).update(
                    t.strip() for t in targets.split(","))
        for final in finals_and_rest[-1].split(","):
            graph.setdefault(final.strip(), set())
        initial = set(re.findall(r"[a-zA-Z_]+", initial_text.split("may")[1]))
        initial -= {"be", "or", "start", "at"}
        out[vocabulary] = (graph, initial)
    return out
