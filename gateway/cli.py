"""The `smile-gateway` command line (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar

from gateway import __version__, batch
from gateway.config import (
    CONFIG_ENV,
    Settings,
    advisories,
    endpoint_text,
    load_settings,
    redact_url,
    settings_in_force,
)
from gateway.domain import LONG_RANGE, MESSAGE_TYPES, SubscriptionFeaturesUpdate
from gateway.errors import (
    ConfigError,
    DocumentError,
    DocumentInvalidError,
    GatewayError,
    MappingError,
    StoreError,
    TransitionError,
    UnknownSubscriptionError,
    UsageError,
    clip,
    printable,
)
from gateway.ports import (
    BROKER,
    DEAD,
    DISCARD_NOTE,
    FORWARD,
    OUTBOX_STATUSES,
    PENDING,
    OutboxItem,
    Store,
)
from gateway.presentation import inbound_table, mapping_as_dict, mapping_dot, mapping_table
from gateway.translator import Translator

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is exit 2 with one clear line (argparse's own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, os.environ)


# -- validate ---------------------------------------------------------------------------------


class _Progress:
    """A one-line progress counter on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = self.last = time.monotonic()

    def update(self, done: int, invalid: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(f"\r{done} files checked, {invalid} invalid ({rate:,.0f} files/s)")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.bootstrap import checker_factory

    dashes = args.paths.count(batch.STDIN)
    if dashes > 1:
        print(f"smile-gateway: validate: {batch.STDIN} (standard input) is given {dashes} "
              "times: it can be read once", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args)
    out = sys.stdout
    problems: list[str] = []

    def missing(path: str, why: str) -> None:
        problems.append(path)
        print(f"{printable(path)}: cannot read: {printable(why)}", file=sys.stderr)

    def empty(folder: str) -> None:
        print(f"note: {folder}: no *.xml files in this folder or below", file=sys.stderr)

    factory = checker_factory(settings)
    factory()  # the schema compiles (under 1 ms), or a ConfigError before any output or worker
    valid = invalid = 0
    progress = _Progress(sys.stderr)
    as_json = args.format == "json"
    if as_json:
        out.write('{"files":[')
    first = True
    for chunk, results in batch.run(batch.discover(args.paths, missing, empty), factory,
                                    args.jobs):
        if not as_json and results.count(None) == len(results):
            valid += len(results)  # the common case: nothing to print
        else:
            for path, result in zip(chunk, results, strict=True):
                shown = "<stdin>" if path == batch.STDIN else path
                if result is None:
                    valid += 1
                elif result.unreadable is not None:
                    missing(shown, result.unreadable)
                    continue
                else:
                    invalid += 1
                    if not as_json:
                        where = printable(shown)  # a sample's text is not the terminal's
                        out.writelines(f"{where}:{v.line}:{v.column}: {printable(v.message)}\n"
                                       for v in result.violations)
                if as_json:
                    errors = [] if result is None else [v.as_dict() for v in result.violations]
                    entry = {"path": shown, "valid": result is None, "errors": errors}
                    out.write(("" if first else ",") + json.dumps(entry))
                    first = False
        progress.update(valid + invalid, invalid)
    progress.close()
    if as_json:
        out.write(f'],"valid":{valid},"invalid":{invalid}}}\n')
    else:
        out.write(f"{valid} valid, {invalid} invalid\n")
    out.flush()
    if problems:
        return EXIT_USAGE
    return EXIT_INVALID if invalid else EXIT_OK


# -- translate, mapping, check-config ---------------------------------------------------------


def _read_input(path: str, limit: int) -> bytes:
    """The file's bytes, or standard input's for `-`: never more than one byte over `limit`
    (enough for the codec to refuse it), so /dev/zero or an endless pipe cannot fill memory."""
    if path == batch.STDIN:
        return sys.stdin.buffer.read(limit + 1)
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as exc:
        raise _Unreadable(f"{path}: cannot read: {exc.strerror or exc}") from exc


class _Unreadable(Exception):
    """A file named on the command line cannot be read (exit 2)."""


def _snapshot(translator: Translator, path: str, limit: int) -> SubscriptionFeaturesUpdate:
    document = translator.codec.decode(_read_input(path, limit))
    if not isinstance(document, SubscriptionFeaturesUpdate):
        raise DocumentInvalidError(
            f"a snapshot must be a SubscriptionFeaturesUpdate document, "
            f"found {type(document).__name__}")
    return document


def _print_document_error(path: str, exc: DocumentError) -> None:
    """As `validate` prints them: a line per violation, located; the error alone when it
    has none (its summary would only repeat them)."""
    if not exc.violations:
        print(f"{printable(path)}: {printable(str(exc))}", file=sys.stderr)
    for v in exc.violations:
        print(f"{printable(path)}:{v.line}:{v.column}: {printable(v.message)}",
              file=sys.stderr)


def cmd_to_smile(args: argparse.Namespace) -> int:
    from gateway.bootstrap import build_translator

    settings = _settings(args)
    translator = build_translator(settings)
    try:
        snapshot = _snapshot(translator, args.snapshot, settings.schema.max_bytes)
    except DocumentError as exc:
        _print_document_error(args.snapshot, exc)
        return EXIT_INVALID
    try:
        result = translator.to_smile(
            args.vocabulary, args.state, snapshot, args.from_state,
            check_transition=args.from_state is not None,
            open_request=args.provision_request_id)
    except MappingError as exc:
        print(f"smile-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TransitionError as exc:
        print(f"smile-gateway: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.format == "json":
        json.dump([m.as_dict() for m in result.messages], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for i, message in enumerate(result.messages):
            if i:
                sys.stdout.write("\n")
            sys.stdout.write(message.body.decode("utf-8"))
        if not result.messages:
            print(f"# {result.vocabulary} {result.previous or '(new)'} -> {result.state}: "
                  "no Smile message", file=sys.stderr)
    return EXIT_OK


def cmd_from_smile(args: argparse.Namespace) -> int:
    from gateway.bootstrap import build_translator

    settings = _settings(args)
    translator = build_translator(settings)
    previous = None
    try:
        if args.snapshot is not None:
            previous = _snapshot(translator, args.snapshot, settings.schema.max_bytes)
    except DocumentError as exc:
        _print_document_error(args.snapshot, exc)
        return EXIT_INVALID
    try:
        result = translator.from_smile(_read_input(args.file, settings.schema.max_bytes),
                                       args.message_type, previous=previous)
    except DocumentError as exc:
        _print_document_error(args.file, exc)
        return EXIT_INVALID
    report = result.as_dict()
    if args.format == "json":
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for key, value in report.items():
            if isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(map(str, value)) or "-"
            print(f"{key}: {'(no change)' if value is None else printable(str(value))}")
    return EXIT_OK


def cmd_mapping(args: argparse.Namespace) -> int:
    settings = _settings(args)
    mapping = settings.mapping
    names = [args.vocabulary] if args.vocabulary else list(mapping.vocabularies)
    vocabularies = [mapping.vocabulary(name) for name in names]
    if args.format == "json":
        json.dump(mapping_as_dict(mapping, names), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.format == "dot":
        for vocab in vocabularies:
            sys.stdout.write(mapping_dot(vocab))
    else:
        for vocab in vocabularies:
            sys.stdout.write(mapping_table(vocab))
        if not args.vocabulary:
            sys.stdout.write(inbound_table(mapping))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.bootstrap import build_codec, store_advisories

    settings = _settings(args)
    build_codec(settings)  # the schema compiles (a ConfigError naming schema.path if not)
    for advice in [*advisories(settings), *store_advisories(settings)]:
        print(f"warning: {advice}", file=sys.stderr)
    if args.show:
        import yaml  # here: the other commands start faster without it

        shown, secrets = settings_in_force(settings)
        print(f"# the configuration in force: {settings.source}, then GATEWAY_* overrides; "
              "the mapping is `smile-gateway mapping`'s")
        for line in secrets:
            print(f"# {line}")
        sys.stdout.write(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True))
        return EXIT_OK
    counts = ", ".join(f"{name}: {len(v.states)} states"
                       for name, v in settings.mapping.vocabularies.items())
    print(f"configuration OK ({settings.source}; {counts}; "
          f"emission {'on' if settings.emission.enabled else 'off'})")
    return EXIT_OK


# -- publish, outbox ---------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    from gateway.bootstrap import bootstrap

    settings = _settings(args)
    documents = [_read_input(path, settings.schema.max_bytes) for path in args.files]
    runtime = bootstrap(settings)
    try:
        try:
            ids = runtime.service.publish_documents(args.message_type, documents)
        except DocumentError as exc:
            print(f"smile-gateway: nothing published: {exc}", file=sys.stderr)
            for v in exc.violations:
                print(f"  {v.line}:{v.column}: {v.path} {v.message}", file=sys.stderr)
            return EXIT_INVALID
        if not settings.emission.enabled:
            print("note: emission.enabled is false; `publish` sends anyway, as asked",
                  file=sys.stderr)
        budget = settings.broker.receipt_timeout_s * max(2, settings.emission.max_attempts)
        relay = runtime.broker_relay
        items = {i.message_id: i for i in relay.deliver(ids, time.time() + budget)}
        if relay.waiting_for is not None:
            print(f"note: {relay.waiting_for} relays from this store (a `serve`, or another "
                  "`publish`): the messages were left to it", file=sys.stderr)
        confirmed = 0
        for path, message_id in zip(args.files, ids, strict=True):
            item = items[message_id]
            if item.status == "sent":
                confirmed += 1
                print(f"{path}: confirmed gateway-message-id={message_id}")
            else:
                print(f"{path}: NOT confirmed ({item.status}, attempts {item.attempts}): "
                      f"{printable(item.last_error or relay.last_failure or 'no receipt yet')}; "
                      f"outbox id {item.id}",
                      file=sys.stderr)
        brokers = " or ".join(endpoint_text(*where) for where in settings.broker.endpoints)
        print(f"{confirmed} of {len(ids)} confirmed by the broker at {brokers}")
        return EXIT_OK if confirmed == len(ids) else EXIT_INVALID
    finally:
        runtime.close()


def _from_store(args: argparse.Namespace, read: Callable[[Store], T],
                settings: Settings | None = None) -> T:
    """Open the configured store (of `settings`, when loaded already), do one thing with it,
    close it."""
    from gateway.bootstrap import build_store

    store = build_store(settings if settings is not None else _settings(args))
    try:
        return read(store)
    finally:
        store.close()


def cmd_outbox_list(args: argparse.Namespace) -> int:
    items = _from_store(args, lambda store: store.outbox(args.status, args.limit, args.usn,
                                                         args.channel))
    if args.format == "json":
        json.dump([{"id": i.id, "channel": i.channel, "messageId": i.message_id, "usn": i.usn,
                    "kind": i.kind, "status": i.status, "attempts": i.attempts,
                    "lastError": i.last_error, "createdAt": i.created_at,
                    "updatedAt": i.updated_at} for i in items], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"{'id':>6}  {'channel':8} {'status':10} {'tries':>5}  {'kind':30} {'usn':12} error")
    for i in items:
        print(f"{i.id:>6}  {i.channel:8} {i.status:10} {i.attempts:>5}  "
              f"{printable(i.kind):30} {printable(i.usn):12} {printable(i.last_error or '')}")
    print(f"{len(items)} item(s)" + (f", the newest (--limit {args.limit}: there may be more)"
                                     if len(items) == args.limit else ""))
    return EXIT_OK


def cmd_outbox_show(args: argparse.Namespace) -> int:
    key: str = args.key

    def find(store: Store) -> OutboxItem | None:
        if key.isascii() and key.isdigit():
            return store.outbox_item(int(key)) if int(key) <= LONG_RANGE[1] else None
        found = store.outbox_by_message_ids([key])
        return found[0] if found else None

    item = _from_store(args, find)
    if item is None:
        print(f"smile-gateway: no outbox item {key} (`outbox list` shows them)",
              file=sys.stderr)
        return EXIT_INVALID
    # the body as it is sent, on stdout; the rest on stderr (as `dead-letters show`)
    tries = f" after {item.attempts} attempt(s)" if item.attempts else ""
    print(f"# outbox {item.id}, {item.channel}, {item.status}{tries}, created "
          f"{_iso(item.created_at)}, changed {_iso(item.updated_at)}"
          + (f": {printable(item.last_error)}" if item.last_error else ""), file=sys.stderr)
    key_header = "gateway-message-id" if item.channel == BROKER else "Idempotency-Key"
    for name, value in sorted({key_header: item.message_id, **item.headers}.items()):
        print(f"# {printable(name)}: {printable(value)}", file=sys.stderr)
    sys.stdout.buffer.write(item.body)
    sys.stdout.flush()
    return EXIT_OK


def cmd_outbox_replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.dead):
        print("smile-gateway: outbox replay: give outbox ids or --dead"
              + (", not both" if args.dead else ""), file=sys.stderr)
        return EXIT_USAGE
    done = _from_store(args, lambda store: store.replay(None if args.dead else args.ids))
    print(f"{done.requeued} item(s) re-queued")
    if len(done.pending) == 1:
        print(f"note: outbox id {done.pending[0]} is pending already: the relay sends it as "
              f"it is", file=sys.stderr)
    elif done.pending:
        print(f"note: outbox ids {_ids(done.pending)} are pending already: the relay sends "
              f"them as they are", file=sys.stderr)
    if done.unknown:
        print(f"smile-gateway: outbox replay: no outbox item with id {_ids(done.unknown)} "
              f"(`outbox list` shows the ids)", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def cmd_outbox_discard(args: argparse.Namespace) -> int:
    if not args.ids:
        print("smile-gateway: outbox discard: give outbox ids (of dead items)", file=sys.stderr)
        return EXIT_USAGE
    done = _from_store(args, lambda store: store.discard(args.ids, args.reason))
    print(f"{done.discarded} item(s) discarded")
    for item_id, status in done.not_dead:
        print(f"note: outbox id {item_id} is {status}, not dead: left as it is (`outbox list` "
              "shows why)", file=sys.stderr)
    if done.unknown:
        print(f"smile-gateway: outbox discard: no outbox item with id {_ids(done.unknown)} "
              f"(`outbox list` shows the ids)", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _ids(ids: tuple[int, ...]) -> str:
    return ", ".join(map(str, ids))


def cmd_outbox_prune(args: argparse.Namespace) -> int:
    from gateway.bootstrap import build_store
    from gateway.retention import Pruner

    settings = _settings(args)
    days = settings.store.retention_days if args.older_than_days is None else args.older_than_days
    if days <= 0:
        print("smile-gateway: outbox prune: retention is off (store.retention_days: 0); give "
              "--older-than-days N", file=sys.stderr)
        return EXIT_USAGE
    store = build_store(settings)
    try:
        pruned = Pruner(store, days).run_once()
    finally:
        store.close()
    print(f"{pruned['outbox']} outbox item(s) (sent, suppressed or discarded), "
          f"{pruned['dedupe']} dedupe key(s) and {pruned['dead_letters']} settled dead "
          f"letter(s) older than {days:g} days deleted")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from gateway.bootstrap import backup_store

    copy = backup_store(_settings(args), args.dest)
    print(f"backed up {printable(copy.source)} to {printable(copy.dest)}: "
          f"{-(-copy.size // 1024):,} KiB, store schema version {copy.schema_version}, "
          "integrity ok")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from gateway.bootstrap import restore_store

    done = restore_store(_settings(args), args.source)
    kept = (f"the store it replaced is kept as {printable(done.kept)}" if done.kept else
            "there was no store before it")
    print(f"restored {printable(done.source)} to {printable(done.store)}: store schema "
          f"version {done.schema_version}, integrity ok; {kept}")
    return EXIT_OK


def _subscription_view(args: argparse.Namespace) -> dict[str, Any] | None:
    """The subscription's view as GET /subscriptions/<usn> gives it; None (said on stderr)
    when the store holds no such usn."""
    from gateway.bootstrap import bootstrap

    settings = _settings(args)
    runtime = bootstrap(settings)
    try:
        return runtime.service.subscription_view(args.usn)
    except UnknownSubscriptionError:
        print(f"smile-gateway: no subscription with usn {printable(args.usn)} in the store "
              f"({redact_url(settings.store.url)})", file=sys.stderr)
        return None
    finally:
        runtime.close()


def cmd_subscription_show(args: argparse.Namespace) -> int:
    view = _subscription_view(args)
    if view is None:
        return EXIT_INVALID
    if args.format == "json":
        print(json.dumps(view, indent=2))
        return EXIT_OK
    request = view["provisionRequestId"]
    features = "; ".join(f"{f['featureId']} {printable(f['name'] or '')}".rstrip()
                         for f in view["features"])
    print(f"subscription {printable(view['usn'])} (sid {view['sid']})")
    print("  statuses: " + ", ".join(f"{k} {v}" for k, v in view["statuses"].items()))
    print("  states: " + ", ".join(f"{k} {v}" for k, v in view["states"].items()))
    print(f"  provisionRequestId: {'none open' if request is None else f'{request} (open)'}")
    print(f"  features: {features or '(none)'}")
    print("history (oldest first, the newest 100 at most):")
    for entry in view["history"]:
        change = (f"{entry['vocabulary']} {entry['from'] or '(none)'} -> {entry['to']}"
                  if entry["vocabulary"] else "-")
        print(f"  {_iso(entry['at'])}  {printable(entry['source'])}  "
              f"{printable(entry['eventId'] or '-')}  {printable(change)}  "
              f"{printable(json.dumps(entry['detail'], ensure_ascii=False))}")
    return EXIT_OK


def cmd_subscription_list(args: argparse.Namespace) -> int:
    from gateway.translator import state_key

    settings = _settings(args)
    state: tuple[str, str] | None = None
    if args.state is not None:
        name, sep, text = args.state.partition("=")
        if not sep:
            print(f"smile-gateway: subscription list: give --state as VOCABULARY=STATE "
                  f"(order=inProgress), not {printable(args.state)!r}", file=sys.stderr)
            return EXIT_USAGE
        state = (name, settings.mapping.vocabulary(name).resolve(text))  # MappingError: 2
    now = time.time()
    changed_before = None if args.unchanged_for is None else now - args.unchanged_for
    found = _from_store(args, lambda store: store.subscriptions(state, changed_before,
                                                                args.limit + 1), settings)
    more, found = len(found) > args.limit, found[:args.limit]
    keys = [state_key(name) for name in settings.mapping.vocabularies]
    if args.format == "json":
        json.dump([{"usn": s.usn, "sid": s.sid,
                    "states": {state_key(k): v for k, v in s.states.items()},
                    "provisionRequestId": s.provision_request_id, "changedAt": _iso(s.updated_at),
                    "unchangedSeconds": round(now - s.updated_at, 3)} for s in found],
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"{'usn':14} {'sid':>8}  " + "".join(f"{k:26}" for k in keys)
          + f"{'request':>8}  {'changed':25}  unchanged for")
    for s in found:
        states = {state_key(k): v for k, v in s.states.items()}
        request = "-" if s.provision_request_id is None else str(s.provision_request_id)
        print(f"{printable(s.usn):14} {s.sid:>8}  "
              + "".join(f"{printable(states.get(k) or '-'):26}" for k in keys)
              + f"{request:>8}  {_iso(s.updated_at):25}  {_duration(now - s.updated_at)}")
    print(f"{len(found)} subscription(s)" + (
        f", the least recently changed (--limit {args.limit}: there are more)" if more else ""))
    return EXIT_OK


def cmd_subscription_snapshot(args: argparse.Namespace) -> int:
    view = _subscription_view(args)
    if view is None:
        return EXIT_INVALID
    sys.stdout.write(view["snapshot"])
    sys.stdout.flush()
    return EXIT_OK


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    letters = _from_store(args, lambda store: store.dead_letters(args.limit,
                                                                 args.outstanding))
    if args.format == "json":
        json.dump([{"id": d["id"], "at": _iso(d["at"]), "source": d["source"],
                    "reason": d["reason"], "headers": d["headers"], "bytes": len(d["body"]),
                    "replayed": d["replayed"] and {"at": _iso(d["replayed"]["at"]),
                                                   "outcome": d["replayed"]["outcome"]}}
                   for d in letters], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"{'id':>6}  {'at (UTC)':25} {'source':8} {'replayed':9} {'bytes':>7}  reason")
    for d in letters:
        reason = printable(" ".join(d["reason"].split()))
        # "discarded: why" in the column as "discarded" (`show` gives the why)
        replayed = d["replayed"]["outcome"].split(":")[0] if d["replayed"] else ""
        print(f"{d['id']:>6}  {_iso(d['at']):25} {printable(d['source']):8} {replayed:9} "
              f"{len(d['body']):>7}  {reason[:120]}")
    print(f"{len(letters)} dead letter(s)" + (" not settled" if args.outstanding else "")
          + (f", the newest (--limit {args.limit}: there may be more)"
             if len(letters) == args.limit else ""))
    return EXIT_OK


def cmd_dead_letters_show(args: argparse.Namespace) -> int:
    letter = _from_store(args, lambda store: store.dead_letter(args.id))
    if letter is None:
        print(f"smile-gateway: no dead letter {args.id} (`dead-letters list` shows them)",
              file=sys.stderr)
        return EXIT_INVALID
    # the document as it came, on stdout (to fix and post again, or to validate); the rest on
    # stderr, so that a redirect of stdout holds the document alone
    print(f"# dead letter {letter['id']}, {printable(letter['source'])}, "
          f"{_iso(letter['at'])}: {printable(letter['reason'])}", file=sys.stderr)
    if letter["replayed"] is not None:
        outcome = letter["replayed"]["outcome"]
        print(f"# {_settled(outcome)} {_iso(letter['replayed']['at'])}: "
              f"{printable(outcome.removeprefix(DISCARD_NOTE))}", file=sys.stderr)
    for name, value in sorted(letter["headers"].items()):
        print(f"# {printable(name)}: {printable(value)}", file=sys.stderr)
    sys.stdout.buffer.write(letter["body"])
    sys.stdout.flush()
    return EXIT_OK


def cmd_dead_letters_replay(args: argparse.Namespace) -> int:
    from gateway.bootstrap import bootstrap

    if bool(args.ids) == bool(args.all):
        print("smile-gateway: dead-letters replay: give dead letter ids or --all"
              + (", not both" if args.all else ""), file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args)
    runtime = bootstrap(settings)
    try:
        ids = runtime.store.outstanding_dead_letters() if args.all else args.ids
        if not ids:
            print("no outstanding dead letters")
            return EXIT_OK
        done = [runtime.service.replay_dead_letter(letter_id, args.force) for letter_id in ids]
    finally:
        runtime.close()
    failed = False
    for replay in done:
        name = f"dead letter {replay.letter_id}"
        if replay.outcome == "accepted":
            print(f"{name}: accepted (usn {replay.usn})")
        elif replay.outcome == "duplicate":
            print(f"{name}: already recorded (a repeated delivery of usn {replay.usn})")
        elif replay.outcome == "replayed before":
            detail = replay.detail or ""
            print(f"note: {name} was {_settled(detail)} before, at {_iso(replay.at or 0)} "
                  f"({detail.removeprefix(DISCARD_NOTE)}): left as it is", file=sys.stderr)
        elif replay.outcome == "stale":
            failed = True
            print(f"smile-gateway: {name}: not replayed: {printable(replay.detail or '')} "
                  "(--force replays it anyway)", file=sys.stderr)
        elif replay.outcome == "refused":
            failed = True
            print(f"smile-gateway: {name}: still refused: {printable(replay.detail or '')}",
                  file=sys.stderr)
        else:
            failed = True
            print(f"smile-gateway: no dead letter {replay.letter_id} (`dead-letters list` "
                  "shows them)", file=sys.stderr)
    recorded = sum(1 for replay in done if replay.recorded)
    print(f"{recorded} of {len(done)} dead letter(s) replayed")
    if settings.forward.url and any(replay.outcome == "accepted" for replay in done):
        print("note: their events are queued for forward.url; `serve` delivers them",
              file=sys.stderr)
    return EXIT_INVALID if failed else EXIT_OK


def _settled(outcome: str) -> str:
    """How a settled letter was settled, as a verb: replayed or discarded."""
    return "discarded" if outcome.startswith(DISCARD_NOTE) else "replayed"


def cmd_dead_letters_discard(args: argparse.Namespace) -> int:
    if not args.ids:
        print("smile-gateway: dead-letters discard: give dead letter ids", file=sys.stderr)
        return EXIT_USAGE

    def discard(store: Store) -> list[tuple[int, dict[str, Any] | None, bool]]:
        done = [(letter_id, store.discard_dead_letter(letter_id, args.reason))
                for letter_id in args.ids]  # then, for those not discarded, how they stand
        return [(letter_id, None if discarded else store.dead_letter(letter_id), discarded)
                for letter_id, discarded in done]

    results = _from_store(args, discard)
    failed = False
    for letter_id, letter, discarded in results:
        name = f"dead letter {letter_id}"
        if discarded:
            print(f"{name}: discarded")
        elif letter is None or letter["replayed"] is None:
            failed = True
            print(f"smile-gateway: no dead letter {letter_id} (`dead-letters list` shows them)",
                  file=sys.stderr)
        else:  # settled before (not outstanding, or the store would have discarded it)
            settled = letter["replayed"]
            outcome = settled["outcome"]
            print(f"note: {name} was {_settled(outcome)} before, at {_iso(settled['at'])} "
                  f"({outcome.removeprefix(DISCARD_NOTE)}): left as it is", file=sys.stderr)
    done = sum(1 for _, _, discarded in results if discarded)
    print(f"{done} of {len(results)} dead letter(s) discarded")
    return EXIT_INVALID if failed else EXIT_OK


def _duration(seconds: float) -> str:
    """`1h 5m`, `10m 3s`, `5m`, `42s`: an age as an operator reads it."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def cmd_status(args: argparse.Namespace) -> int:
    """What the store holds and whether anything waits for an operator: exit 1 when it does
    (the store failing its readiness check, dead outbox items, outstanding dead letters, a
    pending item older than --stuck-after)."""
    settings = _settings(args)

    def read(store: Store) -> tuple[Any, Any, Any, str | None]:
        try:
            store.ping()  # what /readyz asks of it: a SQLite store's disk has room to commit
            check = None
        except StoreError as exc:
            check = str(exc)
        return store.counts(), store.oldest_pending(), store.dead_letter_counts(), check

    counts, oldest, letters, check = _from_store(args, read, settings)
    now = time.time()
    outbox: dict[str, dict[str, Any]] = {}
    for (channel, status), n in sorted(counts.items()):
        outbox.setdefault(channel, {})[status] = n
    for channel, at in oldest.items():
        outbox.setdefault(channel, {})["oldestPendingSeconds"] = round(max(0.0, now - at), 1)
    attention: list[str] = []
    if check is not None:
        attention.append(f"the store: {check}")
    dead = sum(n for (_, status), n in counts.items() if status == DEAD)
    if dead:
        attention.append(f"{dead} dead outbox item(s): `smile-gateway outbox list --status dead`")
    waiting = sum(outstanding for _, outstanding in letters.values())
    if waiting:
        attention.append(f"{waiting} outstanding dead letter(s): `smile-gateway dead-letters "
                         "list --outstanding`")
    for channel, at in sorted(oldest.items()):
        if now - at > args.stuck_after:
            attention.append(f"{channel}: the oldest pending item has waited "
                             f"{_duration(now - at)} (over {_duration(args.stuck_after)}): "
                             f"`smile-gateway outbox list --status pending --channel {channel}`")
    if args.format == "json":
        json.dump({"store": redact_url(settings.store.url),
                   "storeCheck": "ok" if check is None else f"failing: {check}",
                   "outbox": outbox,
                   "deadLetters": {source: {"kept": kept, "outstanding": outstanding}
                                   for source, (kept, outstanding) in sorted(letters.items())},
                   "attention": attention}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"store {redact_url(settings.store.url)}: "
              + ("ok" if check is None else "failing"))
        for channel in (BROKER, FORWARD):
            held = outbox.get(channel, {})
            parts = []
            for status in OUTBOX_STATUSES:
                if held.get(status):
                    age = held.get("oldestPendingSeconds") if status == PENDING else None
                    parts.append(f"{status} {held[status]}"
                                 + (f" (oldest {_duration(age)})" if age is not None else ""))
            print(f"outbox {channel}: {', '.join(parts) or 'empty'}")
        for source, (kept, outstanding) in sorted(letters.items()):
            print(f"dead letters {source}: {kept} kept, {outstanding} outstanding")
        if not letters:
            print("dead letters: none")
        if attention:
            print("needs attention:")
            for line in attention:
                print(f"  {line}")
        else:
            print("nothing needs attention")
    return EXIT_INVALID if attention else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Webhook + outbox relays + broker consumer in one process, until SIGTERM, SIGINT or
    SIGHUP (each a graceful stop)."""
    import signal  # here, not for every command: `validate` starts faster without it

    from gateway.bootstrap import bootstrap, build_http_server, ready_checks, store_advisories
    from gateway.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.logging)
    runtime = bootstrap(settings)
    try:
        runtime.store.lock_for_serving()
        if settings.emission.enabled:  # the relay's turn from the start, unless a `publish`
            runtime.broker_relay.our_turn()  # is sending (then after it)
        server = build_http_server(runtime, ready_checks(runtime))
    except BaseException:
        runtime.close()
        raise
    stop = threading.Event()
    failed: list[str] = []

    def stop_serving(name: str) -> None:  # a worker ended on an error it has no answer for
        failed.append(name)
        os.kill(os.getpid(), signal.SIGTERM)  # the main thread stops as on SIGTERM

    workers: list[tuple[str, Callable[[threading.Event], None]]] = []
    if settings.emission.enabled:
        workers.append(("broker-relay", runtime.broker_relay.run))
    if runtime.forward_relay is not None:
        workers.append(("forward-relay", runtime.forward_relay.run))
    if runtime.consumer is not None:
        workers.append(("consumer", runtime.consumer.run))
    if settings.store.retention_days > 0:
        workers.append(("pruner", runtime.pruner.run))
    threads = [threading.Thread(target=supervised, args=(name, work, stop, stop_serving),
                                name=name) for name, work in workers]

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping (no new requests; finishing those in progress)", signum)
        raise SystemExit(0)

    stopping_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # HUP: a closed terminal
    for signum in stopping_signals:
        signal.signal(signum, on_signal)
    for thread in threads:
        thread.start()
    broker = settings.broker
    brokers = "" if not (settings.emission.enabled or settings.inbound.enabled) else (
        " broker=" + " or ".join(endpoint_text(*where) for where in broker.endpoints)
        + (" (TLS)" if broker.tls else " (plain text)"))
    secrets = len(settings.webhook.secret.split())
    log.info("serving store=%s emission=%s inbound=%s forward=%s signatures=%s%s",
             redact_url(settings.store.url),
             "on" if settings.emission.enabled else "off (dry run)",
             settings.inbound.destination if settings.inbound.enabled else "off",
             settings.forward.url or "off",
             f"on ({secrets} secret{'s' if secrets > 1 else ''})" if secrets else "off", brokers)
    for advice in [*advisories(settings), *store_advisories(settings)]:
        log.warning("%s", advice)
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        stop.set()  # first: a worker failing from here on only logs, it sends no SIGTERM
        for signum in stopping_signals:
            signal.signal(signum, signal.SIG_DFL)
        server.close()
        # each thread ends within its longest wait: a broker's receipt, or a POST in progress
        bound = max(settings.broker.receipt_timeout_s, settings.forward.timeout_s) + 5
        for thread in threads:
            thread.join(timeout=bound)
        runtime.close()
        log.info("stopped")
    if failed:
        log.error("stopped because %s failed (see above); the store keeps what it had "
                  "accepted: start the gateway again", ", ".join(failed))
        return EXIT_INVALID
    return EXIT_OK


def supervised(name: str, work: Callable[[threading.Event], None], stop: threading.Event,
               on_failure: Callable[[str], None]) -> None:
    """Runs one of serve's workers until `stop`. Each handles the failures it expects (a broker
    or store gone) itself; one it does not expect is logged with its traceback and stops the
    whole gateway (`on_failure`), so that its supervisor restarts it rather than it go on
    answering 202 with, say, no relay publishing what it accepts."""
    try:
        work(stop)
    except Exception:
        if stop.is_set():
            log.exception("%s failed while stopping", name)
        else:
            log.exception("%s failed: stopping the gateway", name)
            on_failure(name)


# -- parser -----------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace], int]


def _converted(convert: Callable[[str], T], text: str, what: str) -> T:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` (up to `high`, when there is one)."""

    def parse(text: str) -> int:
        value = _converted(int, text, "a whole number")
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, found {text}")
        return value

    return parse


_count = _whole_number(1)  # --limit
_jobs = _whole_number(1, 1024)  # worker processes: more than any machine's cores
_long = _whole_number(*LONG_RANGE)  # ids as the schema types them, and a store column holds


def _positive(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number above 0 of `unit` (days, seconds)."""

    def parse(text: str) -> float:
        value = _converted(float, text, f"a number of {unit}")
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a number of {unit} above 0, found {text}")
        return value

    return parse


def _why(text: str) -> str:
    """A discard's reason: one line, not empty, at most 500 characters (it is kept)."""
    why = " ".join(text.split())
    if not why:
        raise argparse.ArgumentTypeError("say why (the reason is kept with what it sets aside)")
    return clip(why, 500)


def _discard_parser(subparsers: Any, common: argparse.ArgumentParser, summary: str, why: str,
                    func: Command) -> None:
    """`outbox discard` and `dead-letters discard`: ids, and a --reason that is kept."""
    p = subparsers.add_parser("discard", parents=[common], help=summary)
    p.add_argument("ids", nargs="*", type=_long, metavar="ID")
    p.add_argument("--reason", required=True, type=_why, metavar="TEXT", help=why)
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    # --config before the command or after it. The commands' own --config has no default:
    # argparse copies a subparser's defaults over the main parser's values, which would set a
    # --config given before the command back to None. (Parents share their action objects, so
    # the main parser declares its own.)
    config_help = f"configuration file (default: ${CONFIG_ENV}, else ./config.yaml, else built-ins)"
    common = _Parser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help=config_help)
    parser = _Parser(prog="smile-gateway",
                     description="Bridge between Inomial Smile's message bus and order systems.")
    parser.add_argument("--config", default=None, metavar="FILE", help=config_help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", parents=[common],
                       help="check Smile XML documents against the schema")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="files, folders (every *.xml below), or - for standard input")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                   help="worker processes (default 1)")
    p.set_defaults(func=cmd_validate)

    tr = sub.add_parser("translate", parents=[common],
                        help="what the mapping makes of a state change or a Smile document")
    tsub = tr.add_subparsers(dest="direction", required=True, parser_class=_Parser)
    p = tsub.add_parser("to-smile", parents=[common],
                        help="the Smile messages a state change emits for a snapshot")
    p.add_argument("--vocabulary", required=True, help="order or subscription")
    p.add_argument("--state", required=True, metavar="S")
    p.add_argument("--snapshot", required=True, metavar="FILE",
                   help="the subscription's current SubscriptionFeaturesUpdate document")
    p.add_argument("--from", dest="from_state", metavar="S0",
                   help="the current state: the change is then checked against the graph")
    p.add_argument("--provision-request-id", type=_long, metavar="N",
                   help="the subscription has this provision request open")
    p.add_argument("--format", choices=("xml", "json"), default="xml")
    p.set_defaults(func=cmd_to_smile)

    p = tsub.add_parser("from-smile", parents=[common],
                        help="the internal states a Smile document means")
    p.add_argument("file", metavar="FILE", help="the document (- for standard input)")
    p.add_argument("--message-type", choices=sorted(MESSAGE_TYPES), metavar="T",
                   help="its smileMessageType (checked against the body)")
    p.add_argument("--snapshot", metavar="OLD", help="the stored snapshot, for the feature diff")
    p.add_argument("--format", choices=("json", "text"), default="json")
    p.set_defaults(func=cmd_from_smile)

    p = sub.add_parser("mapping", parents=[common],
                       help="the state mapping and transition graphs in force")
    p.add_argument("--vocabulary", metavar="V")
    p.add_argument("--format", choices=("table", "json", "dot"), default="table")
    p.set_defaults(func=cmd_mapping)

    p = sub.add_parser("check-config", parents=[common], help="load and check the configuration")
    p.add_argument("--show", action="store_true",
                   help="print every key as in force (YAML), secrets hidden")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("publish", parents=[common],
                       help="validate documents and publish them, waiting for receipts")
    p.add_argument("--message-type", required=True, choices=sorted(MESSAGE_TYPES), metavar="T")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_publish)

    ob = sub.add_parser("outbox", parents=[common],
                        help="inspect, re-queue, discard and prune the outbox")
    osub = ob.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = osub.add_parser("list", parents=[common], help="list outbox items")
    p.add_argument("--status", choices=OUTBOX_STATUSES)
    p.add_argument("--channel", choices=(BROKER, FORWARD),
                   help="broker: Smile documents; forward: events for the order system")
    p.add_argument("--usn", metavar="USN", help="one subscription's items")
    p.add_argument("--limit", type=_count, default=1000, help="the newest N (1000)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_outbox_list)
    p = osub.add_parser("show", parents=[common],
                        help="one item's body on stdout, its status and headers on stderr")
    p.add_argument("key", metavar="ID|MESSAGE-ID",
                   help="its outbox id, or its gateway-message-id (Idempotency-Key)")
    p.set_defaults(func=cmd_outbox_show)
    p = osub.add_parser("replay", parents=[common], help="re-queue items (dead letters)")
    p.add_argument("ids", nargs="*", type=_long, metavar="ID")
    p.add_argument("--dead", action="store_true", help="every dead item")
    p.set_defaults(func=cmd_outbox_replay)
    _discard_parser(osub, common, "set dead items aside for good, saying why",
                    "why (kept before the item's last error)", cmd_outbox_discard)
    p = osub.add_parser("prune", parents=[common],
                        help="delete what retention lets go: sent, suppressed and discarded "
                        "items, dedupe keys, settled dead letters")
    p.add_argument("--older-than-days", type=_positive("days"), metavar="N",
                   help="instead of store.retention_days")
    p.set_defaults(func=cmd_outbox_prune)

    dl = sub.add_parser("dead-letters", parents=[common],
                        help="inbound documents that could not be accepted")
    dsub = dl.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = dsub.add_parser("list", parents=[common], help="the newest dead letters, with reasons")
    p.add_argument("--limit", type=_count, default=100, help="the newest N (100)")
    p.add_argument("--outstanding", action="store_true",
                   help="only those not settled (replayed or discarded)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_dead_letters_list)
    p = dsub.add_parser("show", parents=[common],
                        help="one dead letter's document on stdout, its reason on stderr")
    p.add_argument("id", type=_long, metavar="ID")
    p.set_defaults(func=cmd_dead_letters_show)
    p = dsub.add_parser("replay", parents=[common],
                        help="take dead letters again, once their cause is fixed")
    p.add_argument("ids", nargs="*", type=_long, metavar="ID")
    p.add_argument("--all", action="store_true", help="every one not settled, oldest first")
    p.add_argument("--force", action="store_true",
                   help="also those older than their subscription's last change")
    p.set_defaults(func=cmd_dead_letters_replay)
    _discard_parser(dsub, common, "settle dead letters no fix will make acceptable, saying why",
                    "why (kept with the letter; `dead-letters show` prints it)",
                    cmd_dead_letters_discard)

    sb = sub.add_parser("subscription", parents=[common],
                        help="what the store holds of one subscription")
    ssub = sb.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = ssub.add_parser("show", parents=[common],
                        help="snapshot flags, states, open request, features and history, as "
                        "GET /subscriptions/<usn> gives them")
    p.add_argument("usn", metavar="USN")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_subscription_show)
    p = ssub.add_parser("list", parents=[common],
                        help="subscriptions, the least recently changed first (orders stuck "
                        "in a state: --state order=inProgress --unchanged-for 86400)")
    p.add_argument("--state", metavar="VOCABULARY=STATE", help="those in this state")
    p.add_argument("--unchanged-for", type=_positive("seconds"), metavar="SECONDS",
                   help="those not changed for this long")
    p.add_argument("--limit", type=_count, default=1000, metavar="N",
                   help="at most N (1000)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_subscription_list)
    p = ssub.add_parser("snapshot", parents=[common],
                        help="the stored Smile document on stdout (for translate --snapshot)")
    p.add_argument("usn", metavar="USN")
    p.set_defaults(func=cmd_subscription_snapshot)

    p = sub.add_parser("status", parents=[common],
                       help="what the store holds; exit 1 when something needs an operator")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--stuck-after", type=_positive("seconds"), default=300.0, metavar="SECONDS",
                   help="a pending item older than this needs attention (300)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("backup", parents=[common],
                       help="a consistent copy of the SQLite store, also while it is served")
    p.add_argument("dest", metavar="FILE", help="the file to write (one there is replaced)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", parents=[common],
                       help="put a backup in place as the SQLite store (serve stopped), "
                            "keeping the store it replaces")
    p.add_argument("source", metavar="FILE", help="the backup to restore from")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("serve", parents=[common],
                       help="webhook + outbox relay + broker consumer in one process")
    p.set_defaults(func=cmd_serve)
    return parser


# What an error that reaches the top means for the exit status (anything else: 1).
_EXIT_FOR: dict[type[Exception], tuple[str, int]] = {
    ConfigError: ("configuration error: ", EXIT_USAGE),
    MappingError: ("", EXIT_USAGE),
    _Unreadable: ("", EXIT_USAGE),
    StoreError: ("store error: ", EXIT_INVALID),
    UsageError: ("", EXIT_USAGE),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except (ConfigError, MappingError, StoreError, _Unreadable, GatewayError) as exc:
        prefix, code = _EXIT_FOR.get(type(exc), ("", EXIT_INVALID))
        print(f"smile-gateway: {prefix}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
