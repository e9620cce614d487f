"""Issue 18 item 3: human CLI output escapes control characters; JSON is unchanged.

A field value holding terminal control sequences (clear screen, a fake prompt after a
carriage return, a right-to-left override) was printed raw by `record get`. Real
subprocess runs: what reaches the terminal is the process's bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shredvault.cli.output import display_value, printable
from shredvault.vault import Vault

HOSTILE = "Ana\x1b[2J\x1b]0;pwned\x07\rroot# \u202eevil\x9b31m\nsecond line"


def run(*args: str, root: Path, keyfile: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(SHREDVAULT_VAULT=str(root), SHREDVAULT_KEYFILE=str(keyfile))
    return subprocess.run(
        [sys.executable, "-m", "shredvault", *args],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def stored(tmp_path: Path, keyfile: Path) -> tuple[Path, str, str]:
    root = tmp_path / "vault"
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        customer = s.add_customer(ref="crm-\x1b[31m1")
        record = s.put(customer, "profile", {"name": HOSTILE}, purpose="service")
    return root, customer, record


def assert_no_controls(raw: bytes) -> None:
    text = raw.decode("utf-8")
    bad = [ch for ch in text if ch != "\n" and (not ch.isprintable() or ch == "\u202e")]
    assert bad == [], bad


def test_record_get_prints_control_characters_escaped(
    stored: tuple[Path, str, str], keyfile: Path
) -> None:
    root, customer, record = stored
    done = run(
        "record", "get", customer, record, "--purpose", "service", root=root, keyfile=keyfile
    )
    assert done.returncode == 0, done.stderr
    assert_no_controls(done.stdout)
    assert_no_controls(done.stderr)
    assert "Ana\\x1b[2J" in done.stdout.decode() and "\\u202eevil" in done.stdout.decode()
    assert "second line" in done.stdout.decode() and "\\x0asecond line" in done.stdout.decode()


def test_record_list_and_customer_list_escape_too(
    stored: tuple[Path, str, str], keyfile: Path
) -> None:
    root, customer, _record = stored
    listed = run("record", "list", customer, "--purpose", "service", root=root, keyfile=keyfile)
    assert listed.returncode == 0, listed.stderr
    assert_no_controls(listed.stdout)
    customers = run("customer", "list", root=root, keyfile=keyfile)
    assert customers.returncode == 0, customers.stderr
    assert_no_controls(customers.stdout)
    assert "crm-\\x1b[31m1" in customers.stdout.decode()


def test_json_output_keeps_the_exact_value(stored: tuple[Path, str, str], keyfile: Path) -> None:
    root, customer, record = stored
    done = run(
        "record", "get", customer, record, "--purpose", "service", "--json",
        root=root, keyfile=keyfile,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fields"]["name"] == HOSTILE


def test_printable_escapes_every_control_and_keeps_text() -> None:
    for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x202E, 0x2066]:
        shown = printable(chr(code))
        assert shown.startswith("\\") and all(ch.isprintable() for ch in shown)
    assert printable("王晓梅 · Zoë ✓") == "王晓梅 · Zoë ✓"
    assert printable("a\nb", keep_newlines=True) == "a\nb"
    assert display_value("a\nb") == "a\\x0ab"
