"""The mapping in force as a text table, JSON, or Graphviz dot (for `smile-gateway mapping`)."""

from __future__ import annotations

from gateway.mapping import STATUS_FLAGS, StateMapping, Vocabulary


def mapping_as_dict(mapping: StateMapping, names: list[str] | None = None) -> dict[str, object]:
    names = names if names is not None else list(mapping.vocabularies)
    return {
        "vocabularies": {
            name: {
                "states": [{"id": s, "name": v.display.get(s, s)} for s in v.states],
                "case_sensitive": v.case_sensitive,
                "initial": list(v.initial),
                "transitions": {s: list(n) for s, n in v.transitions.items()},
                "outbound": {s: v.rule(s).as_dict() for s in v.states},
            }
            for name in names
            for v in (mapping.vocabulary(name),)
        },
        "inbound": [{"when": r.when, **r.states} for r in mapping.inbound],
        "response_statuses": list(mapping.response_statuses),
        "progress_statuses": list(mapping.progress_statuses),
    }


def _grid(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [title, line.format(*header).rstrip(), line.format(*("-" * w for w in widths))]
    out += [line.format(*r).rstrip() for r in rows]
    return "\n".join(out) + "\n\n"


def mapping_table(vocab: Vocabulary) -> str:
    header = ["state", *(f.capitalize() for f in STATUS_FLAGS), "smileMessageType", "response",
              "next states"]
    rows = []
    for state in vocab.states:
        rule = vocab.rule(state)
        flags = [str(getattr(rule, f) or "-") for f in STATUS_FLAGS]
        nexts = ", ".join(vocab.transitions.get(state, ())) or "(final)"
        mark = "*" if state in vocab.initial else ""
        rows.append([state + mark, *flags, rule.message or "none", rule.response or "", nexts])
    return _grid(f"{vocab.name} (* = may start here; - keeps the current value)", header, rows)


def inbound_table(mapping: StateMapping) -> str:
    names = list(mapping.vocabularies)
    header = ["when (first match wins)", *names]
    rows = [[", ".join(f"{k}={v}" for k, v in r.when.items()) or "(always)",
             *(r.states.get(n) or "(no change)" for n in names)] for r in mapping.inbound]
    return _grid("Smile -> internal", header, rows)


def mapping_dot(vocab: Vocabulary) -> str:
    def q(text: str) -> str:
        return '"' + text.replace('"', r'\"') + '"'

    lines = [f"digraph {q(vocab.name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for state in vocab.states:
        rule = vocab.rule(state)
        label = state + (f"\\n{rule.message}" if rule.message else "")
        attrs = [f"label={q(label)}"]
        if state in vocab.initial:
            attrs.append("style=bold")
        if not vocab.transitions.get(state):
            attrs.append("peripheries=2")
        lines.append(f"  {q(state)} [{', '.join(attrs)}];")
    for state, nexts in vocab.transitions.items():
        lines.extend(f"  {q(state)} -> {q(n)};" for n in nexts)
    lines.append("}")
    return "\n".join(lines) + "\n"
