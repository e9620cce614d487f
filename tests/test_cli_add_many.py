"""``customer add-many FILE`` (issue 19 item 4) and the progress meter's totals and time
left (cli/meter.py): JSON lines or CSV, every line checked before anything is written,
ids printed in the file's order, --json one document on stdout with progress only on
stderr."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from shredvault.cli.meter import Meter, duration_text

from clirun import Run, make_run


@pytest.fixture
def run(tmp_path: Path, keyfile: Path) -> Run:
    run = make_run(tmp_path / "vault", keyfile)
    assert run("init", str(tmp_path / "vault")).exit_code == 0
    return run


def test_add_many_from_json_lines_prints_ids_in_order(run: Run, tmp_path: Path) -> None:
    source = tmp_path / "customers.jsonl"
    lines = [
        {"ref": "crm-1", "consent": {"transfer": True}},
        {"ref": "crm-2", "retain_until": "2030-01-01"},
        {},
    ]
    source.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")

    result = run("customer", "add-many", str(source), "--batch-size", "2")

    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    assert len(ids) == 3 and all(i.startswith("cus_") for i in ids)
    shown = json.loads(run("customer", "show", ids[0], "--json").stdout)
    assert shown["ref"] == "crm-1" and shown["consent"] == {"transfer": True}
    assert json.loads(run("customer", "show", ids[1], "--json").stdout)["retain_until"]


def test_add_many_from_csv_with_json_output(run: Run, tmp_path: Path) -> None:
    source = tmp_path / "customers.csv"
    source.write_text("ref,consent:transfer,retain_until\ncrm-1,yes,\ncrm-2,no,2031-05-01\n")

    result = run("customer", "add-many", str(source), "--json")

    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["added"]) == 2
    listed = json.loads(run("customer", "list", "--json").stdout)
    assert sorted(c["ref"] for c in listed) == ["crm-1", "crm-2"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.jsonl", '{"ref": "a"}\n{"ref": "b", "color": "red"}\n'),
        ("bad.jsonl", '{"ref": "a"}\nnot json\n'),
        ("bad.jsonl", '{"ref": "a"}\n[1, 2]\n'),
        ("bad.csv", "ref,colour\na,b\n"),
        ("bad.csv", "ref,consent:transfer\na,maybe\n"),
        ("bad.csv", "ref\na,b\n"),
    ],
)
def test_add_many_refuses_a_bad_line_and_writes_nothing(
    run: Run, tmp_path: Path, name: str, text: str
) -> None:
    source = tmp_path / name
    source.write_text(text)
    result = run("customer", "add-many", str(source), "--json")
    assert result.exit_code in (1, 2), result.output
    assert result.stdout == ""
    assert json.loads(run("customer", "list", "--json").stdout) == []


def test_add_many_reads_stdin(run: Run) -> None:
    result = run("customer", "add-many", "-", input='{"ref": "x"}\n')
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split()) == 1


# -- the meter ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_meter_writes_lines_with_total_and_time_left_off_a_terminal() -> None:
    clock, out = FakeClock(), io.StringIO()
    with Meter("rotating DEKs", unit="customers", clock=clock, stream=out) as meter:
        meter.expect(20_000)
        clock.now += 0.5
        meter(1000)
        assert out.getvalue() == ""  # under a second: quiet
        clock.now += 1.5
        meter(3000)  # 4,000 in 2 s: 2,000/s, 16,000 left: 8 s
        clock.now += 1
        meter(2000)  # within the interval: no new line
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "rotating DEKs: 4,000/20,000 customers (20%), 2,000 customers/s, about 8 s left"
    )
    assert lines[1] == "rotating DEKs: 6,000 customers in 3.0 s (2,000 customers/s)"
    assert len(lines) == 2


def test_durations_read_as_seconds_minutes_and_hours() -> None:
    assert [duration_text(s) for s in (0.4, 42, 185, 7440)] == [
        "0 s",
        "42 s",
        "3 min 05 s",
        "2 h 04 min",
    ]
