"""Generates varied, valid Smile documents for the benchmarks (string templates, not the codec)."""

from __future__ import annotations

import random
from pathlib import Path

_PROPS = (
    ('String', 'username', lambda r: f"user{r.randrange(10**6)}@example.com"),
    ('Boolean', 'billPrintName', lambda r: r.choice(("true", "false"))),
    ('Integer', 'vlan', lambda r: str(r.randrange(4096))),
    ('Decimal', 'discount', lambda r: f"{r.random():.2f}"),
    ('Date', 'portDate', lambda r: f"20{r.randrange(10, 30)}-0{r.randrange(1, 10)}-1{r.randrange(10)}"),
    ('Timestamp', 'since', lambda r: f"2024-0{r.randrange(1, 10)}-01T00:00:00.000+10:00"),
    ('String', 'abn', lambda r: None),
)
_STATUSES = (
    ("ReadyToProvision", "Active", "Activated", "NotEnabled"),
    ("Provisioned", "Active", "NotActivated", "Enabled"),
    ("Provisioned", "Active", "Activated", "Enabled"),
    ("Provisioned", "Suspended", "NotActivated", "Enabled"),
)


def _object(r: random.Random, pad: str, count: int) -> str:
    if count == 0:
        return f"{pad}<Object/>\n"
    lines = [f"{pad}<Object>\n"]
    for kind, name, value in r.sample(_PROPS, count):
        v = value(r)
        lines.append(f'{pad}  <{kind} name="{name}"/>\n' if v is None
                     else f'{pad}  <{kind} name="{name}">{v}</{kind}>\n')
    lines.append(f"{pad}</Object>\n")
    return "".join(lines)


def document(r: random.Random, i: int) -> str:
    st = r.choice(_STATUSES)
    feats = "".join(
        f"    <Feature>\n      <FeatureId>{5000 + j}</FeatureId>\n      <Name>Feature {j}</Name>\n"
        f"{_object(r, '      ', r.randrange(3))}    </Feature>\n"
        for j in range(r.randrange(4)))
    features = f"  <ActiveFeatures>\n{feats}  </ActiveFeatures>\n" if feats else "  <ActiveFeatures/>\n"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<SubscriptionFeaturesUpdate xmlns="http://xml.inomial.com/smile/2.xsd">\n'
        f"  <Subscription>\n    <USN>{2142426762 + i}</USN>\n    <SID>{100 + i % 900}</SID>\n"
        f"    <ServiceName>Service {i}</ServiceName>\n    <Parent>{1000000000 + i % 97}</Parent>\n"
        f"    <Properties>\n{_object(r, '      ', r.randrange(1, 6))}    </Properties>\n"
        f"    <ProvisionStatus>{st[0]}</ProvisionStatus>\n    <SuspendStatus>{st[1]}</SuspendStatus>\n"
        f"    <ActivateStatus>{st[2]}</ActivateStatus>\n    <EnableStatus>{st[3]}</EnableStatus>\n"
        f"  </Subscription>\n{features}  <PlanScheduleItems>\n    <PlanScheduleItem>\n"
        f"      <PlanCode>tp{i % 50}</PlanCode>\n      <PlanScheduleType>1</PlanScheduleType>\n"
        f"      <Start>2012-08-08T00:00:00.000+10:00</Start>\n    </PlanScheduleItem>\n"
        "  </PlanScheduleItems>\n</SubscriptionFeaturesUpdate>\n")


def write_corpus(folder: Path, count: int, seed: int = 7) -> list[Path]:
    r = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        p = sub / f"doc{i:06d}.xml"
        p.write_text(document(r, i))
        paths.append(p)
    return paths
