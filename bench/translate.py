"""State changes rendered to validated bytes per second, against bare lxml, in one run.

    python bench/translate.py [--count N]

The gateway side is `Translator.to_smile` (resolve the states, check the transition, apply the
mapping row, build the document, serialise, validate against the XSD, build the headers). The
bare side builds the same document with lxml by hand, serialises and validates it. Writes the
figures to BENCHMARKS.md ("translate").
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section

from gateway.bootstrap import build_codec, build_translator
from gateway.config import load_settings
from gateway.domain import SubscriptionFeaturesUpdate

NS = "{http://xml.inomial.com/smile/2.xsd}"


def fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    return str(value)


def bare_render(doc: SubscriptionFeaturesUpdate, schema: etree.XMLSchema) -> bytes:
    """What a hand-written integration would do: build, serialise, validate."""
    sub = doc.subscription
    root = etree.Element(NS + "SubscriptionFeaturesUpdate", nsmap={None: NS[1:-1]})
    s = etree.SubElement(root, NS + "Subscription")
    for tag, text in (("USN", sub.usn), ("SID", str(sub.sid)), ("ServiceName", sub.service_name),
                      ("Parent", sub.parent)):
        etree.SubElement(s, NS + tag).text = text
    obj = etree.SubElement(etree.SubElement(s, NS + "Properties"), NS + "Object")
    for p in sub.properties:
        el = etree.SubElement(obj, NS + p.type.value, name=p.name)
        if p.value is not None:
            el.text = fmt(p.value)
    for tag, text in (("ProvisionStatus", "Provisioned"), ("SuspendStatus", "Active"),
                      ("ActivateStatus", "Activated"), ("EnableStatus", "Enabled")):
        etree.SubElement(s, NS + tag).text = text
    for tag, cycle in (("InvoicingCycle", sub.invoicing_cycle), ("RatingCycle", sub.rating_cycle)):
        if cycle is not None:
            c = etree.SubElement(s, NS + tag)
            etree.SubElement(c, NS + "CycleType").text = cycle.cycle_type
            etree.SubElement(c, NS + "CycleDay").text = str(cycle.cycle_day)
    for tag, keyed in (("Timezone", sub.timezone), ("CostCentre", sub.cost_centre)):
        if keyed is not None:
            etree.SubElement(s, NS + tag, key=keyed.key).text = keyed.text
    features = etree.SubElement(root, NS + "ActiveFeatures")
    for f in doc.features:
        fe = etree.SubElement(features, NS + "Feature")
        etree.SubElement(fe, NS + "FeatureId").text = str(f.feature_id)
        etree.SubElement(fe, NS + "Name").text = f.name
        fo = etree.SubElement(fe, NS + "Object")
        for p in f.properties:
            el = etree.SubElement(fo, NS + p.type.value, name=p.name)
            if p.value is not None:
                el.text = fmt(p.value)
    plans = etree.SubElement(root, NS + "PlanScheduleItems")
    for plan in doc.plans:
        pe = etree.SubElement(plans, NS + "PlanScheduleItem")
        etree.SubElement(pe, NS + "PlanCode").text = plan.plan_code
        etree.SubElement(pe, NS + "PlanScheduleType").text = str(plan.plan_schedule_type)
        if plan.start is not None:
            etree.SubElement(pe, NS + "Start").text = plan.start.isoformat(
                timespec="milliseconds")
    data = b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(
        root, encoding="UTF-8", pretty_print=True)
    if not schema.validate(root):
        raise SystemExit(f"bare document invalid: {schema.error_log}")
    return data


def rate(fn, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    settings = load_settings(ROOT / "config.yaml", {})
    translator = build_translator(settings)
    codec = build_codec(settings)
    snapshot = codec.decode((ROOT / "samples" / "SubscriptionFeaturesChanged.xml").read_bytes())
    assert isinstance(snapshot, SubscriptionFeaturesUpdate)
    schema = etree.XMLSchema(etree.parse(str(ROOT / "xsd" / "smile-2.xsd")))

    def gateway() -> None:
        translator.to_smile("subscription", "active", snapshot, "activating")

    def bare() -> None:
        bare_render(snapshot, schema)

    out = translator.to_smile("subscription", "active", snapshot, "activating").messages[0].body
    assert out == bare_render(snapshot, schema), "the two sides must render the same bytes"
    for fn in (gateway, bare):  # warm up
        rate(fn, 500)
    gw_runs, bare_runs = [], []
    for _ in range(args.runs):  # interleaved, so that drift on a shared machine hits both
        gw_runs.append(rate(gateway, args.count))
        bare_runs.append(rate(bare, args.count))
    gw, bl = max(gw_runs), max(bare_runs)
    body = f"""`bench/translate.py --count {args.count}`: one state change (subscription
activating -> active, emitting SubscriptionActivated for the SubscriptionFeaturesChanged sample:
2 features, 2 plans) rendered to validated bytes; best of {args.runs} interleaved runs; both sides produce
the same bytes. {machine()}.

| path | changes/s | cost vs bare lxml |
|---|---|---|
| `Translator.to_smile` (mapping, build, serialise, validate, headers) | {gw:,.0f} | {bl / gw:.2f}x |
| bare lxml: build by hand, serialise, validate | {bl:,.0f} | 1.00x |

Goal: the gateway's cost at most 1.5x the bare lxml cost (now {bl / gw:.2f}x).
"""
    write_section("translate", body)
    print(body)


if __name__ == "__main__":
    main()
