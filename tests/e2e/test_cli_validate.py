"""`smile-gateway validate` through the real entry point."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import INVALID, SAMPLES, run_cli


def test_the_bundled_samples_are_all_valid() -> None:
    done = run_cli(["validate", "samples/"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "10 valid, 0 invalid"


def test_every_invalid_fixture_exits_1_with_located_lines() -> None:
    done = run_cli(["validate", str(INVALID)])
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    total = len(list(INVALID.glob("*.xml")))
    assert lines[-1] == f"0 valid, {total} invalid"
    named = {line.split(":", 1)[0] for line in lines[:-1]}
    assert named == {str(p) for p in INVALID.glob("*.xml")}
    for line in lines[:-1]:
        _path, row, col, message = line.split(":", 3)
        assert int(row) >= 1 and int(col) >= 1 and message.strip(), line
    assert "Traceback" not in done.stderr


def test_text_lines_are_path_line_column_message() -> None:
    done = run_cli(["validate", str(INVALID / "sid-not-integer.xml")])
    assert done.stdout.splitlines()[0] == (
        f"{INVALID / 'sid-not-integer.xml'}:5:5: Element 'SID': 'S170' is not a valid value of "
        "the atomic type 'xs:long'.")


def test_json_output_lists_every_file_with_its_errors() -> None:
    done = run_cli(["validate", "--format", "json", str(INVALID / "several-violations.xml"),
                    str(SAMPLES / "SubscriptionClosed.xml")])
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert (report["valid"], report["invalid"]) == (1, 1)
    first, second = report["files"]
    assert first["valid"] is False and second == {
        "path": str(SAMPLES / "SubscriptionClosed.xml"), "valid": True, "errors": []}
    assert [e["path"] for e in first["errors"]] == [
        "/SubscriptionFeaturesUpdate/Subscription/SID",
        "/SubscriptionFeaturesUpdate/Subscription/EnableStatus",
        "/SubscriptionFeaturesUpdate/PlanScheduleItems/PlanScheduleItem/PlanScheduleType"]
    assert set(first["errors"][0]) == {"line", "column", "path", "message"}


def test_standard_input_is_read_for_a_dash() -> None:
    good = run_cli(["validate", "-"], stdin=(SAMPLES / "SubscriptionEnabled.xml").read_bytes())
    assert good.returncode == 0 and b"1 valid, 0 invalid" in good.stdout
    bad = run_cli(["validate", "-"], stdin=(INVALID / "truncated.xml").read_bytes())
    assert bad.returncode == 1 and bad.stdout.startswith(b"<stdin>:14:")


def test_a_dash_given_twice_is_a_usage_error() -> None:
    # the second read would find standard input spent and report an empty document
    r = run_cli(["validate", "-", str(SAMPLES), "-"],
                stdin=(SAMPLES / "SubscriptionEnabled.xml").read_bytes())
    assert r.returncode == 2 and r.stdout == b""
    assert b"- (standard input) is given 2 times: it can be read once" in r.stderr


def test_worker_processes_give_the_same_report_in_the_same_order(tmp_path: Path) -> None:
    for i in range(40):  # more than one chunk's worth across two folders
        src = SAMPLES / "SubscriptionActivated.xml" if i % 3 else INVALID / "sid-not-integer.xml"
        shutil.copy(src, tmp_path / f"{i:03d}.xml")
    one = run_cli(["validate", "--jobs", "1", str(tmp_path), str(INVALID)])
    two = run_cli(["validate", "--jobs", "2", str(tmp_path), str(INVALID)])
    assert one.returncode == two.returncode == 1
    assert one.stdout == two.stdout


def test_an_unreadable_path_exits_2_and_the_rest_is_still_checked(tmp_path: Path) -> None:
    done = run_cli(["validate", str(tmp_path / "missing.xml"), str(SAMPLES)])
    assert done.returncode == 2
    assert "missing.xml: cannot read: no such file or folder" in done.stderr
    assert "10 valid, 0 invalid" in done.stdout


def test_a_path_that_is_not_a_file_says_what_it_is(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.xml")  # never opened: reading a FIFO would wait for a writer
    (tmp_path / "dangling.xml").symlink_to(tmp_path / "gone.xml")
    (tmp_path / "loop.xml").symlink_to(tmp_path / "loop.xml")
    done = run_cli(["validate", str(tmp_path / "pipe.xml"), str(tmp_path / "dangling.xml"),
                    str(tmp_path / "loop.xml")], timeout=30)
    assert done.returncode == 2
    assert ("pipe.xml: cannot read: not a regular file or a folder (for a pipe, give - and "
            "pipe it to standard input)") in done.stderr
    assert f"dangling.xml: cannot read: a symbolic link to {str(tmp_path / 'gone.xml')!r}, " \
        "which does not exist" in done.stderr
    assert "loop.xml: cannot read: Too many levels of symbolic links" in done.stderr


def test_a_folder_s_xml_entries_that_are_no_files_are_told_and_the_rest_checked(
        tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "SubscriptionClosed.xml", tmp_path / "good.xml")
    os.mkfifo(tmp_path / "pipe.xml")
    (tmp_path / "dangling.xml").symlink_to(tmp_path / "gone.xml")
    (tmp_path / "loop.xml").symlink_to(tmp_path / "loop.xml")
    (tmp_path / "folder").mkdir()
    (tmp_path / "linked.xml").symlink_to(tmp_path / "folder")  # not followed, not a problem
    done = run_cli(["validate", str(tmp_path)], timeout=30)
    assert done.returncode == 2 and "1 valid, 0 invalid" in done.stdout
    assert "Traceback" not in done.stderr
    told = sorted(line.split(": cannot read: ")[0].rsplit("/", 1)[-1]
                  for line in done.stderr.splitlines() if ": cannot read: " in line)
    assert told == ["dangling.xml", "loop.xml", "pipe.xml"]
    assert "loop.xml: cannot read: Too many levels of symbolic links" in done.stderr


def test_usage_errors_exit_2() -> None:
    assert run_cli(["validate"]).returncode == 2
    bad_jobs = run_cli(["validate", "--jobs", "0", "samples"])
    assert bad_jobs.returncode == 2 and "from 1 to 1024, found 0" in bad_jobs.stderr
    assert run_cli(["validate", "--jobs", "100000", "samples"]).returncode == 2
    assert run_cli(["validate", "--format", "yaml", "samples"]).returncode == 2


def test_only_xml_files_below_a_folder_are_taken(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not xml")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    shutil.copy(SAMPLES / "SubscriptionClosed.xml", tmp_path / "deep" / "er" / "a.xml")
    done = run_cli(["validate", str(tmp_path)])
    assert done.returncode == 0 and "1 valid, 0 invalid" in done.stdout


def test_a_bad_configuration_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("schema:\n  max_bytez: 5\n")
    done = run_cli(["validate", "--config", str(cfg), "samples"])
    assert done.returncode == 2
    assert "schema.max_bytez: unknown key" in done.stderr


def test_a_folder_without_xml_files_is_noted(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not xml")
    done = run_cli(["validate", str(tmp_path)])
    assert done.returncode == 0 and "0 valid, 0 invalid" in done.stdout
    assert f"note: {tmp_path}: no *.xml files in this folder or below" in done.stderr


@pytest.mark.parametrize("args", [
    ["validate", "samples"],
    ["validate", "--jobs", "2", "--format", "json", "samples"],
    ["check-config"],
    ["translate", "from-smile", "samples/SubscriptionEnabled.xml"],
    ["serve"],
])
def test_a_schema_that_does_not_compile_is_a_config_error_naming_schema_path(
        args: list[str], tmp_path: Path) -> None:
    schema = tmp_path / "broken.xsd"
    schema.write_text("<notaschema/>")
    done = run_cli(args, env={"GATEWAY_SCHEMA__PATH": str(schema),
                              "GATEWAY_STORE__URL": f"sqlite:///{tmp_path / 'g.db'}"},
                   timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # not even the start of a JSON report
    assert (f"smile-gateway: configuration error: schema.path: {schema} is not a usable XML "
            f"Schema: The XML document '{schema}' is not a schema document.") in done.stderr
    assert "Traceback" not in done.stderr


def test_a_sample_cannot_drive_the_terminal_its_report_is_read_on(tmp_path: Path) -> None:
    """XML 1.0 carries C1 controls (U+009B is a terminal's CSI), and a file name may hold any
    byte but / and NUL: the text report shows them escaped."""
    text = (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8")
    bad = text.replace("<ProvisionStatus>", "<ProvisionStatus>X\u009b2J", 1)
    path = tmp_path / "sample\x1b[2J.xml"
    path.write_text(bad, "utf-8")
    done = run_cli(["validate", str(path)])
    assert done.returncode == 1
    assert "\x1b" not in done.stdout and "\u009b" not in done.stdout
    assert "sample\\x1b[2J.xml:14:5: Element 'ProvisionStatus'" in done.stdout
    assert "'X\\x9b2J" in done.stdout
    as_json = json.loads(run_cli(["validate", "--format", "json", str(path)]).stdout)
    assert as_json["files"][0]["path"] == str(path)  # JSON carries it as it is, escaped by JSON
