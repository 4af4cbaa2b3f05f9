"""The shipped mapping against docs/mapping.md: every row, every state, every (from, to) pair.

The expectations are read from docs/mapping.md (tests/spec_tables.py), not copied by hand.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from gateway.config import Settings, load_settings
from gateway.domain import ActivateStatus, EnableStatus, ProvisionStatus, Statuses, SuspendStatus
from gateway.errors import ConfigError, MappingError, TransitionError
from gateway.mapping import load_mapping
from tests.conftest import ROOT
from tests.spec_tables import FLAGS, graphs, inbound_rules, outbound_rows


@pytest.fixture(scope="module")
def shipped() -> Settings:
    return load_settings(ROOT / "config.yaml", {})


def all_pairs(vocabulary: str) -> list[tuple[str, str, str]]:
    graph, _ = graphs()[vocabulary]
    return [(vocabulary, a, b) for a, b in itertools.product(sorted(graph), repeat=2)]


@pytest.mark.parametrize("vocabulary", ["order", "subscription"])
def test_the_vocabulary_has_exactly_the_documented_states(shipped: Settings, vocabulary) -> None:
    graph, initial = graphs()[vocabulary]
    vocab = shipped.mapping.vocabulary(vocabulary)
    assert set(vocab.states) == set(graph)
    assert set(vocab.initial) == initial


@pytest.mark.parametrize(("vocabulary", "current", "wanted"),
                         all_pairs("order") + all_pairs("subscription"))
def test_every_pair_is_allowed_or_refused_as_documented(shipped: Settings, vocabulary, current,
                                                        wanted) -> None:
    graph, _ = graphs()[vocabulary]
    vocab = shipped.mapping.vocabulary(vocabulary)
    if current == wanted:
        assert vocab.check_transition(current, wanted) is False  # a harmless no-op
    elif wanted in graph[current]:
        assert vocab.check_transition(current, wanted) is True
    else:
        with pytest.raises(TransitionError) as caught:
            vocab.check_transition(current, wanted)
        assert f"{current} -> {wanted}" in str(caught.value)


@pytest.mark.parametrize("vocabulary", ["order", "subscription"])
def test_a_new_one_may_start_only_at_the_documented_states(shipped: Settings, vocabulary) -> None:
    graph, initial = graphs()[vocabulary]
    vocab = shipped.mapping.vocabulary(vocabulary)
    for state in graph:
        if state in initial:
            assert vocab.check_transition(None, state)
        else:
            with pytest.raises(TransitionError):
                vocab.check_transition(None, state)


@pytest.mark.parametrize("row", outbound_rows()["order"] + outbound_rows()["subscription"],
                         ids=lambda r: r.state)
def test_every_documented_outbound_row_is_in_the_shipped_config(shipped: Settings, row) -> None:
    vocabulary = "order" if row in outbound_rows()["order"] else "subscription"
    rule = shipped.mapping.vocabulary(vocabulary).rule(row.state)
    assert {f: (None if getattr(rule, f) is None else str(getattr(rule, f)))
            for f in FLAGS} == row.flags
    assert rule.message == row.message
    assert rule.response == row.response


def matches(rule_text: str, flags: dict[str, str]) -> bool:
    """Reads a rule of section 3 ("ProvisionStatus = Deprovisioned", "Provisioned, Activated")."""
    for token in (t.strip() for t in rule_text.split(",")):
        if "=" in token:
            name, value = (p.strip() for p in token.split("="))
            if flags[name.removesuffix("Status").lower()] != value:
                return False
        elif token.startswith("not all of the above"):
            continue  # the rule before it did not match: that is the condition
        elif token not in flags.values():
            return False
    return True


ALL_FLAGS = [Statuses(*combo) for combo in itertools.product(
    ProvisionStatus, SuspendStatus, ActivateStatus, EnableStatus)]


@pytest.mark.parametrize("statuses", ALL_FLAGS, ids=lambda s: "/".join(s.as_dict().values()))
def test_every_flag_combination_maps_inbound_by_the_first_documented_rule(
        shipped: Settings, statuses: Statuses) -> None:
    flags = statuses.as_dict()
    expected = next((order, sub) for text, order, sub in inbound_rules() if matches(text, flags))
    got = shipped.mapping.inbound_states(statuses)
    assert (got["order"], got["subscription"]) == expected


def test_subscription_states_accept_display_names_in_any_case(shipped: Settings) -> None:
    vocab = shipped.mapping.vocabulary("subscription")
    assert vocab.resolve("Provisioning in Progress") == "provisioning_in_progress"
    assert vocab.resolve("PROVISIONING IN PROGRESS") == "provisioning_in_progress"
    assert vocab.resolve("contract ready for review") == "contract_ready_for_review"
    assert vocab.resolve("Active") == "active"


def test_order_states_are_case_sensitive_and_errors_list_the_allowed(shipped: Settings) -> None:
    vocab = shipped.mapping.vocabulary("order")
    with pytest.raises(MappingError) as caught:
        vocab.resolve("InProgress")
    assert "inProgress" in str(caught.value) and "allowed:" in str(caught.value)


def raw_mapping() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())["mapping"]


@pytest.mark.parametrize(("edit", "key", "words"), [
    (lambda m: m["vocabularies"]["order"]["transitions"].update(accepted=["shipped"]),
     "mapping.vocabularies.order.transitions.accepted", "unknown state 'shipped'"),
    (lambda m: m["vocabularies"]["order"]["transitions"].pop("held"),
     "mapping.vocabularies.order.transitions", "'held' has no row"),
    (lambda m: m["vocabularies"]["order"]["outbound"]["accepted"].update(provision="Ready"),
     "mapping.vocabularies.order.outbound.accepted.provision", "unknown status 'Ready'"),
    (lambda m: m["vocabularies"]["order"]["outbound"]["accepted"].update(
        message="SubscriptionReady"),
     "mapping.vocabularies.order.outbound.accepted.message", "unknown message type"),
    (lambda m: m["vocabularies"]["order"]["outbound"].update(shipped={"response": "Held"}),
     "mapping.vocabularies.order.outbound.shipped", "unknown state"),
    (lambda m: m["vocabularies"]["order"]["outbound"]["held"].update(response="OnHold"),
     "mapping.vocabularies.order.outbound.held.response", "unknown response status"),
    (lambda m: m["vocabularies"]["order"].update(colour="blue"),
     "mapping.vocabularies.order.colour", "unknown key"),
    (lambda m: m["inbound"][0]["when"].update(provision="Gone"),
     "mapping.inbound[0].when.provision", "unknown status 'Gone'"),
    (lambda m: m["inbound"][0].update(order="done"),
     "mapping.inbound[0].order", "unknown state 'done'"),
    (lambda m: m["vocabularies"]["subscription"].update(initial=["nope"]),
     "mapping.vocabularies.subscription.initial", "unknown state 'nope'"),
    (lambda m: m["vocabularies"]["order"].update(initial=[]),
     "mapping.vocabularies.order.initial", "at least one state a new subscription may start in"),
    (lambda m: m["vocabularies"]["order"]["states"].append("held"),
     "mapping.vocabularies.order.states", "'held' is listed twice"),
    (lambda m: m["vocabularies"]["order"]["states"].append(7),
     "mapping.vocabularies.order.states", "expected state names (strings), found 7"),
    (lambda m: m["vocabularies"]["order"]["states"].append(None),
     "mapping.vocabularies.order.states", "expected state names (strings), found None"),
    (lambda m: m["vocabularies"]["order"]["states"].append(""),
     "mapping.vocabularies.order.states", "expected state names (strings), found ''"),
    (lambda m: m["vocabularies"]["subscription"]["states"].update(Active="Live"),
     "mapping.vocabularies.subscription.states",
     "'Active' and 'active' are one name to a vocabulary whose case_sensitive is false"),
    (lambda m: m["vocabularies"]["subscription"]["states"].update(expired="Active"),
     "mapping.vocabularies.subscription.states",
     "'expired' (Active) and 'active' are one name"),
    (lambda m: m["vocabularies"]["subscription"]["states"].update(expired=3),
     "mapping.vocabularies.subscription.states.expired",
     "expected a display name (a string), found 3"),
    (lambda m: m["vocabularies"]["subscription"].update(
        states=["draft", "Active", "Active"], initial=["draft"],
        transitions={"draft": [], "Active": []}, outbound={}),
     "mapping.vocabularies.subscription.states", "'Active' is listed twice"),
    (lambda m: m["inbound"].insert(0, {"when": {}, "order": None, "subscription": None}),
     "mapping.inbound[1]", "never matches: inbound[0] comes first and matches every document "
     "this rule would"),
    (lambda m: m["inbound"].insert(2, {"when": {"provision": "Provisioned", "suspend": "Active"},
                                       "order": "completed", "subscription": "active"}),
     "mapping.inbound[3]", "never matches: inbound[2] comes first"),
    (lambda m: m.update(vocabularies={}),
     "mapping.vocabularies", "at least one vocabulary is needed"),
])
def test_a_bad_mapping_is_a_config_error_naming_the_key(edit, key: str, words: str) -> None:
    mapping = raw_mapping()
    edit(mapping)
    with pytest.raises(ConfigError) as caught:
        load_mapping(mapping)
    assert str(caught.value).startswith(key + ":")
    assert words in str(caught.value)


def test_a_deployment_can_change_a_row_in_its_own_file(tmp_path: Path) -> None:
    cfg = tmp_path / "site.yaml"
    mapping = raw_mapping()
    mapping["vocabularies"]["order"]["outbound"]["held"] = {"suspend": "Suspended",
                                                            "message": "SubscriptionSuspended"}
    cfg.write_text(yaml.safe_dump({"mapping": mapping}))
    rule = load_settings(cfg, {}).mapping.vocabulary("order").rule("held")
    assert rule.message == "SubscriptionSuspended" and rule.response is None
