"""``keys status|rotate-kek|retire-epoch|rotate-dek|change-passphrase``: rotation keeps
every record readable, moves every DEK to one epoch, and a changed passphrase locks the
old one out (6). Keyfiles everywhere except the one test that needs a passphrase."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shredvault.cli.main import cli
from shredvault.cli.meter import Meter
from shredvault.keys import generate_keyfile

Run = Callable[..., Result]

NAME = "Amara Osei"
OLD_PASSPHRASE = "quince ladder 5521 otter"
NEW_PASSPHRASE = "marble kettle 0947 heron"


@dataclass(frozen=True)
class Setup:
    """A keyfile vault with a profile kind and two customers with a record each."""

    root: Path
    keyfile: Path
    customers: list[str]
    records: list[str]


def make_run(root: Path, **defaults: str | None) -> Run:
    runner = CliRunner()
    base = {
        "SHREDVAULT_VAULT": str(root),
        "SHREDVAULT_KEYFILE": None,
        "SHREDVAULT_PASSPHRASE": None,
        "SHREDVAULT_NEW_PASSPHRASE": None,
        "SHREDVAULT_DATA_URL": None,
        "SHREDVAULT_TOKEN": None,
        **defaults,
    }

    def run(*args: str, input: str | None = None, **env: str | None) -> Result:
        return runner.invoke(
            cli, list(args), input=input, env={**base, **env}, catch_exceptions=False
        )

    return run


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    base = tmp_path_factory.mktemp("keys")
    keyfile = base / "vault.key"
    generate_keyfile(keyfile)
    root = base / "vault"
    run = make_run(root, SHREDVAULT_KEYFILE=str(keyfile))
    assert run("init", str(root)).exit_code == 0
    declared = run("kind", "declare", "profile", "--fields", "name", "--purposes", "service")
    assert declared.exit_code == 0
    customers, records = [], []
    for i in range(2):
        customers.append(run("customer", "add").stdout.strip())
        put = run(
            "record", "put", customers[-1], "profile", "--purpose", "service",
            "--field", f"name={NAME} {i}",
        )  # fmt: skip
        assert put.exit_code == 0, put.output
        records.append(put.stdout.strip())
    return Setup(root, keyfile, customers, records)


@pytest.fixture
def setup(template: Setup, tmp_path: Path) -> Setup:
    """A private copy of the template vault (same keyfile)."""
    root = tmp_path / "vault"
    shutil.copytree(template.root, root)
    return Setup(root, template.keyfile, template.customers, template.records)


@pytest.fixture
def run(setup: Setup) -> Run:
    return make_run(setup.root, SHREDVAULT_KEYFILE=str(setup.keyfile))


def status(run: Run) -> dict[str, object]:
    result = run("keys", "status", "--json")
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout)
    return report


def all_readable(run: Run, setup: Setup) -> bool:
    return all(
        run("record", "get", c, r, "--purpose", "service").exit_code == 0
        for c, r in zip(setup.customers, setup.records, strict=True)
    )


# -- status -----------------------------------------------------------------------------


def test_status_json_reports_epochs_deks_key_source_and_policy(run: Run) -> None:
    report = status(run)
    assert report["active_epoch"] == 1
    assert report["deks_per_epoch"] == {"1": 2}
    assert report["key_source"] == "keyfile" and report["kdf"] is None
    assert report["violations"] == [] and report["rehash_due"] is False
    assert report["last_rotation"] is None
    assert report["policy"] == {"max_kek_age_days": 365, "max_dek_age_days": 730}
    for name in ("active_epoch_created", "active_epoch_age_days", "oldest_dek_created"):
        assert name in report


def test_status_takes_the_policy_from_the_options(run: Run) -> None:
    result = run("keys", "status", "--max-kek-age", "30", "--max-dek-age", "90", "--json")
    assert json.loads(result.stdout)["policy"] == {"max_kek_age_days": 30, "max_dek_age_days": 90}
    text = run("keys", "status", "--max-kek-age", "30").stdout
    assert "active KEK epoch" in text and "30 days" in text


def test_status_with_a_zero_day_policy_is_a_usage_error(run: Run) -> None:
    assert run("keys", "status", "--max-kek-age", "0").exit_code == 2


# -- KEK rotation -----------------------------------------------------------------------


def test_rotate_kek_with_retire_leaves_one_epoch_holding_every_dek(run: Run, setup: Setup) -> None:
    result = run("keys", "rotate-kek", "--retire", "--yes", "--json")
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.stdout)
    assert rotated["epoch"] == 2 and rotated["rewrapped"] == 2 and rotated["retired"] == [1]
    report = status(run)
    assert report["active_epoch"] == 2 and report["deks_per_epoch"] == {"2": 2}
    assert report["last_rotation"] is not None
    assert all_readable(run, setup)


def test_rotate_kek_prints_the_rate_and_the_old_epoch_can_be_retired_after(run: Run) -> None:
    result = run("keys", "rotate-kek", "--yes")
    assert result.exit_code == 0, result.output
    assert "new KEK epoch 2" in result.stdout and "DEKs/s" in result.stdout
    assert run("keys", "retire-epoch", "1").exit_code == 0
    assert status(run)["deks_per_epoch"] == {"2": 2}


def test_retire_epoch_json_names_the_retired_epoch(run: Run) -> None:
    assert run("keys", "rotate-kek", "--yes").exit_code == 0
    result = run("keys", "retire-epoch", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"epoch": 1, "retired": True}
    assert status(run)["deks_per_epoch"] == {"2": 2}


def test_retiring_the_active_epoch_is_refused(run: Run) -> None:
    result = run("keys", "retire-epoch", "1")
    assert result.exit_code == 1
    assert "active" in result.stderr


def test_rotate_kek_without_yes_and_without_a_terminal_exits_2(run: Run) -> None:
    assert run("keys", "rotate-kek").exit_code == 2
    assert status(run)["active_epoch"] == 1


# -- DEK rotation -----------------------------------------------------------------------


def test_rotate_dek_of_one_customer_keeps_its_records_readable(run: Run, setup: Setup) -> None:
    customer, record = setup.customers[0], setup.records[0]
    result = run("keys", "rotate-dek", customer, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"customer": customer, "dek_version": 2}
    got = run("record", "get", customer, record, "--purpose", "service", "--json")
    assert json.loads(got.stdout)["fields"] == {"name": f"{NAME} 0"}


def test_rotate_dek_all_rotates_every_active_customer(run: Run, setup: Setup) -> None:
    result = run("keys", "rotate-dek", "--all", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["rotated"]) == sorted(setup.customers)
    assert all_readable(run, setup)


def test_rotate_dek_older_than_skips_young_keys(run: Run) -> None:
    result = run("keys", "rotate-dek", "--older-than", "30", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rotated"] == []


@pytest.mark.parametrize("args", [[], ["--all", "--older-than", "1"]], ids=["none", "two"])
def test_rotate_dek_needs_exactly_one_target(run: Run, args: list[str]) -> None:
    assert run("keys", "rotate-dek", *args).exit_code == 2


def test_rotate_dek_of_a_shredded_customer_exits_4(run: Run, setup: Setup) -> None:
    customer = setup.customers[1]
    assert run("shred", customer, "--reason", "asked", "--yes").exit_code == 0
    assert run("keys", "rotate-dek", customer).exit_code == 4


# -- passphrase and keyfile -------------------------------------------------------------


def test_change_passphrase_locks_out_the_old_one_and_the_new_one_opens(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    run = make_run(root)
    assert run("init", str(root), SHREDVAULT_PASSPHRASE=OLD_PASSPHRASE).exit_code == 0
    changed = run(
        "keys",
        "change-passphrase",
        SHREDVAULT_PASSPHRASE=OLD_PASSPHRASE,
        SHREDVAULT_NEW_PASSPHRASE=NEW_PASSPHRASE,
    )
    assert changed.exit_code == 0, changed.output
    old = run("customer", "list", SHREDVAULT_PASSPHRASE=OLD_PASSPHRASE)
    assert old.exit_code == 6
    new = run("keys", "status", "--json", SHREDVAULT_PASSPHRASE=NEW_PASSPHRASE)
    assert new.exit_code == 0, new.output
    assert json.loads(new.stdout)["key_source"] == "passphrase"
    for result in (changed, old, new):
        assert OLD_PASSPHRASE not in result.output and NEW_PASSPHRASE not in result.output


def test_switching_to_a_new_keyfile_locks_out_the_old_keyfile(
    run: Run, setup: Setup, tmp_path: Path
) -> None:
    new_key = tmp_path / "new.key"
    result = run("keys", "change-passphrase", "--new-keyfile", str(new_key))
    assert result.exit_code == 0, result.output
    assert str(new_key) in result.stdout
    assert stat.S_IMODE(new_key.stat().st_mode) == 0o600
    assert run("customer", "list").exit_code == 6
    assert all_readable(make_run(setup.root, SHREDVAULT_KEYFILE=str(new_key)), setup)


@pytest.mark.parametrize("where", ["existing", "inside-vault"])
def test_a_new_keyfile_is_refused_over_a_file_or_inside_the_vault(
    run: Run, setup: Setup, where: str
) -> None:
    target = setup.keyfile if where == "existing" else setup.root / "new.key"
    before = setup.keyfile.read_bytes()
    result = run("keys", "change-passphrase", "--new-keyfile", str(target))
    assert result.exit_code == 2
    assert setup.keyfile.read_bytes() == before
    assert not (setup.root / "new.key").exists()
    assert run("customer", "list").exit_code == 0


def test_change_passphrase_without_a_new_secret_and_without_a_terminal_exits_2(run: Run) -> None:
    result = run("keys", "change-passphrase")
    assert result.exit_code == 2
    assert "SHREDVAULT_NEW_PASSPHRASE" in result.stderr


def test_an_empty_new_passphrase_file_is_a_usage_error(run: Run, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = run("keys", "change-passphrase", "--new-passphrase-file", str(empty))
    assert result.exit_code == 2
    assert run("customer", "list").exit_code == 0


# -- the rate bar -----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_meter_stays_quiet_for_short_work_and_reports_the_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    with Meter("re-wrapping DEKs", unit="DEKs", expected=4000, clock=clock) as meter:
        clock.now += 0.5
        meter(2000)
        assert capsys.readouterr().err == ""  # under a second: no bar
        clock.now += 0.5
        meter(2000)
    assert "re-wrapping DEKs" in capsys.readouterr().err  # past a second: the bar appeared
    assert meter.done == 4000 and meter.rate == pytest.approx(4000.0)
    assert meter.summary() == "4,000 DEKs in 1.0 s (4,000 DEKs/s)"
