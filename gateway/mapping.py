"""Transition graphs and the state <-> Smile tables, loaded and checked from config (pure)."""

from __future__ import annotations

from collections.abc import Mapping as AnyMapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain import (
    MESSAGE_TYPES,
    ActivateStatus,
    EnableStatus,
    ProvisionStatus,
    Statuses,
    SuspendStatus,
)
from gateway.errors import ConfigError, MappingError, TransitionError

STATUS_FLAGS: dict[str, type[ProvisionStatus | SuspendStatus | ActivateStatus | EnableStatus]] = {
    "provision": ProvisionStatus,
    "suspend": SuspendStatus,
    "activate": ActivateStatus,
    "enable": EnableStatus,
}
_OUTBOUND_KEYS = (*STATUS_FLAGS, "message", "response")
_VOCABULARY_KEYS = ("states", "case_sensitive", "initial", "transitions", "outbound")


@dataclass(frozen=True, slots=True)
class OutboundRule:
    """What entering a state emits: new flag values (None keeps), a message, a response."""

    provision: ProvisionStatus | None = None
    suspend: SuspendStatus | None = None
    activate: ActivateStatus | None = None
    enable: EnableStatus | None = None
    message: str | None = None
    response: str | None = None

    def apply(self, current: Statuses) -> Statuses:
        return Statuses(
            self.provision or current.provision,
            self.suspend or current.suspend,
            self.activate or current.activate,
            self.enable or current.enable,
        )

    def as_dict(self) -> dict[str, str | None]:
        return {key: (None if (v := getattr(self, key)) is None else str(v))
                for key in _OUTBOUND_KEYS}


NO_EMISSION = OutboundRule()


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """One internal vocabulary (order, subscription): states, graph and outbound table."""

    name: str
    states: tuple[str, ...]
    display: dict[str, str]
    case_sensitive: bool
    initial: tuple[str, ...]
    transitions: dict[str, tuple[str, ...]]
    outbound: dict[str, OutboundRule]

    def resolve(self, text: str) -> str:
        """The state id for `text` (an id, or a display name when the vocabulary allows it)."""
        if text in self.transitions:
            return text
        if not self.case_sensitive:
            folded = text.strip().casefold()
            for state in self.states:
                if folded in (state.casefold(), self.display.get(state, "").casefold()):
                    return state
        raise MappingError(f"unknown {self.name} state {text!r}", self.states)

    def check_transition(self, current: str | None, wanted: str) -> bool:
        """True when current -> wanted is a change the graph allows, False for a harmless repeat.

        Raises TransitionError when the graph refuses it (a new one must start at `initial`).
        """
        if current == wanted:
            return False
        if current is None:
            if wanted not in self.initial:
                raise TransitionError(self.name, "(new)", wanted, self.initial)
            return True
        allowed = self.transitions.get(current, ())
        if wanted not in allowed:
            raise TransitionError(self.name, current, wanted, allowed)
        return True

    def rule(self, state: str) -> OutboundRule:
        return self.outbound.get(state, NO_EMISSION)


@dataclass(frozen=True, slots=True)
class InboundRule:
    when: dict[str, str]
    states: dict[str, str | None]

    def matches(self, flags: AnyMapping[str, str]) -> bool:
        """`flags`: Statuses.as_dict()."""
        return all(flags[flag] == value for flag, value in self.when.items())


@dataclass(frozen=True, slots=True)
class StateMapping:
    vocabularies: dict[str, Vocabulary]
    inbound: tuple[InboundRule, ...]
    response_statuses: tuple[str, ...]
    progress_statuses: tuple[str, ...] = ()
    _inbound_by_flags: dict[tuple[str, str, str, str], dict[str, str | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def vocabulary(self, name: str) -> Vocabulary:
        try:
            return self.vocabularies[name]
        except KeyError:
            raise MappingError(f"unknown vocabulary {name!r}", self.vocabularies) from None

    def inbound_states(self, statuses: Statuses) -> dict[str, str | None]:
        """Smile flags -> {vocabulary: state or None (no change)}; first matching rule wins."""
        key = statuses.values()
        states = self._inbound_by_flags.get(key)
        if states is None:  # there are 24 combinations of flags: each is matched once
            flags = statuses.as_dict()
            states = next((rule.states for rule in self.inbound if rule.matches(flags)),
                          dict.fromkeys(self.vocabularies))
            self._inbound_by_flags[key] = states
        return dict(states)


# -- loading ----------------------------------------------------------------------------------


def _expect_mapping(value: Any, key: str) -> AnyMapping[str, Any]:
    if not isinstance(value, AnyMapping):
        raise ConfigError(key, f"expected a mapping, found {type(value).__name__}")
    return value


def _expect_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list, found {type(value).__name__}")
    return value


def _check_keys(raw: AnyMapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    for name in raw:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", "unknown key", allowed)


def _state_list(value: Any, key: str, states: tuple[str, ...]) -> tuple[str, ...]:
    items = _expect_list(value, key)
    for item in items:
        if item not in states:
            raise ConfigError(key, f"unknown state {item!r}", states)
    return tuple(items)


def _load_rule(raw: Any, key: str, response_statuses: tuple[str, ...]) -> OutboundRule:
    rule = _expect_mapping(raw, key)
    _check_keys(rule, key, _OUTBOUND_KEYS)
    values: dict[str, Any] = {}
    for flag, enum in STATUS_FLAGS.items():
        if flag in rule:
            allowed = tuple(e.value for e in enum)
            if rule[flag] not in allowed:
                raise ConfigError(f"{key}.{flag}", f"unknown status {rule[flag]!r}", allowed)
            values[flag] = enum(rule[flag])
    message = rule.get("message")
    if message is not None and message not in MESSAGE_TYPES:
        raise ConfigError(f"{key}.message", f"unknown message type {message!r}", MESSAGE_TYPES)
    response = rule.get("response")
    if response is not None and response not in response_statuses:
        raise ConfigError(f"{key}.response", f"unknown response status {response!r}",
                          response_statuses)
    return OutboundRule(message=message, response=response, **values)


def _load_states(raw: Any, key: str,
                 case_sensitive: bool) -> tuple[tuple[str, ...], dict[str, str]]:
    """The state ids in order and their display names (when written as a mapping). Each
    name means one state: ids are unique, and where case does not count neither an id nor a
    display name may fold to another state's."""
    display: dict[str, str] = {}
    if isinstance(raw, AnyMapping):
        ids = list(raw)
        for state, shown in raw.items():
            if not isinstance(shown, str) or not shown.strip():
                raise ConfigError(f"{key}.{state}", "expected a display name (a string), "
                                  f"found {shown!r}")
            display[state] = shown
    else:
        ids = _expect_list(raw, key)
    if not ids:
        raise ConfigError(key, "a vocabulary needs at least one state")
    listed: set[str] = set()
    seen: dict[str, tuple[str, str]] = {}  # a name as matched -> (state, as written)
    for state in ids:
        if not isinstance(state, str) or not state.strip():
            raise ConfigError(key, f"expected state names (strings), found {state!r}")
        if state in listed:
            raise ConfigError(key, f"{state!r} is listed twice")
        listed.add(state)
        for spelled in (state, display.get(state, state)):
            name = spelled if case_sensitive else spelled.strip().casefold()
            other = seen.setdefault(name, (state, spelled))
            if other[0] != state:
                raise ConfigError(key, f"{_named(state, spelled)} and {_named(*other)} are one "
                                  "name to a vocabulary whose case_sensitive is false")
            if case_sensitive:
                break  # display names are not read as input there
    return tuple(ids), display


def _named(state: str, spelled: str) -> str:
    return repr(state) if spelled == state else f"{state!r} ({spelled})"


def _load_vocabulary(name: str, raw: Any, key: str,
                     response_statuses: tuple[str, ...]) -> Vocabulary:
    spec = _expect_mapping(raw, key)
    _check_keys(spec, key, _VOCABULARY_KEYS)
    case_sensitive = spec.get("case_sensitive", True)
    if not isinstance(case_sensitive, bool):
        raise ConfigError(f"{key}.case_sensitive", "expected true or false")
    states, display = _load_states(spec.get("states"), f"{key}.states", case_sensitive)
    graph = _expect_mapping(spec.get("transitions", {}), f"{key}.transitions")
    transitions: dict[str, tuple[str, ...]] = {}
    for state in states:
        if state not in graph:
            raise ConfigError(f"{key}.transitions", f"state {state!r} has no row "
                              "(write [] for a final state)")
    for state, nexts in graph.items():
        if state not in states:
            raise ConfigError(f"{key}.transitions.{state}", "unknown state", states)
        transitions[state] = _state_list(nexts or [], f"{key}.transitions.{state}", states)
    outbound_raw = _expect_mapping(spec.get("outbound", {}), f"{key}.outbound")
    outbound = {}
    for state, rule in outbound_raw.items():
        if state not in states:
            raise ConfigError(f"{key}.outbound.{state}", "unknown state", states)
        outbound[state] = _load_rule(rule, f"{key}.outbound.{state}", response_statuses)
    initial = _state_list(spec.get("initial", list(states[:1])), f"{key}.initial", states)
    if not initial:
        raise ConfigError(f"{key}.initial", "at least one state a new subscription may start "
                          "in is needed", states)
    return Vocabulary(
        name=name,
        states=states,
        display=display,
        case_sensitive=case_sensitive,
        initial=initial,
        transitions=transitions,
        outbound=outbound,
    )


def load_mapping(raw: Any, key: str = "mapping") -> StateMapping:
    """Build the StateMapping from the `mapping` section; ConfigError names the bad key."""
    spec = _expect_mapping(raw, key)
    _check_keys(spec, key, ("response_statuses", "progress_statuses", "vocabularies", "inbound"))
    response_statuses = tuple(
        str(s) for s in _expect_list(spec.get("response_statuses", ["Provisioned"]),
                                     f"{key}.response_statuses"))
    progress_statuses = tuple(
        str(s) for s in _expect_list(spec.get("progress_statuses", []),
                                     f"{key}.progress_statuses"))
    for word in progress_statuses:
        if word not in response_statuses:
            raise ConfigError(f"{key}.progress_statuses", f"unknown response status {word!r}",
                              response_statuses)
    vocab_raw = _expect_mapping(spec.get("vocabularies"), f"{key}.vocabularies")
    if not vocab_raw:
        raise ConfigError(f"{key}.vocabularies", "at least one vocabulary is needed (the "
                          "shipped config.yaml has order and subscription)")
    vocabularies = {
        str(name): _load_vocabulary(str(name), v, f"{key}.vocabularies.{name}", response_statuses)
        for name, v in vocab_raw.items()
    }
    rules: list[InboundRule] = []
    for i, raw_rule in enumerate(_expect_list(spec.get("inbound", []), f"{key}.inbound")):
        rkey = f"{key}.inbound[{i}]"
        rule = _expect_mapping(raw_rule, rkey)
        _check_keys(rule, rkey, ("when", *vocabularies))
        when = dict(_expect_mapping(rule.get("when", {}), f"{rkey}.when"))
        for flag, value in when.items():
            if flag not in STATUS_FLAGS:
                raise ConfigError(f"{rkey}.when.{flag}", "unknown status flag", STATUS_FLAGS)
            allowed = tuple(e.value for e in STATUS_FLAGS[flag])
            if value not in allowed:
                raise ConfigError(f"{rkey}.when.{flag}", f"unknown status {value!r}", allowed)
        states: dict[str, str | None] = {}
        for vname, vocab in vocabularies.items():
            state = rule.get(vname)
            if state is not None and state not in vocab.states:
                raise ConfigError(f"{rkey}.{vname}", f"unknown state {state!r}", vocab.states)
            states[vname] = state
        for j, earlier in enumerate(rules):
            if earlier.when.items() <= when.items():  # first match wins: this one is dead
                raise ConfigError(rkey, f"never matches: inbound[{j}] comes first and matches "
                                  "every document this rule would (put the narrower rule "
                                  "first)")
        rules.append(InboundRule(when, states))
    return StateMapping(vocabularies, tuple(rules), response_statuses, progress_statuses)
