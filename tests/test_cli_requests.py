"""The request desk, consent and notices from the command line with --json
(docs/requests.md): an erasure from open to a verified receipt in real processes; the
rest (consent, notices and the handover's notice window, errors as JSON) in-process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from shredvault.keys import FLOOR, generate_keyfile
from shredvault.vault import handover_keygen

from clirun import Run, make_run

Proc = subprocess.CompletedProcess[str]
Shell = Callable[..., Proc]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("shredvault")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shredvault"]


def _shell(tmp_path: Path) -> Shell:
    """Real processes on the ``run`` fixture's vault."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(
        SHREDVAULT_KEYFILE=str(tmp_path / "vault.key"), SHREDVAULT_VAULT=str(tmp_path / "vault")
    )

    def shell(*args: str) -> Proc:
        return subprocess.run(
            [*_command(), *args], input="", capture_output=True, text=True, env=env,
            timeout=120, check=False,
        )  # fmt: skip

    return shell


def _json(proc: Proc | Result) -> object:
    code = proc.returncode if isinstance(proc, subprocess.CompletedProcess) else proc.exit_code
    assert code == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    keyfile = tmp_path / "vault.key"
    generate_keyfile(keyfile)
    root = tmp_path / "vault"
    run = make_run(root, keyfile)
    assert run("init", str(root)).exit_code == 0
    assert (
        run("kind", "declare", "profile", "--fields", "name", "--purposes", "service").exit_code
        == 0
    )
    return run


def test_erasure_request_from_open_to_a_verified_receipt(run: Run, tmp_path: Path) -> None:
    sh = _shell(tmp_path)
    cid = run("customer", "add", "--ref", "crm-7").stdout.strip()
    opened = _json(sh("request", "open", "--ref", "crm-7", "--type", "erasure",
                      "--channel", "email", "--note", "secret note 4411", "--json"))  # fmt: skip
    assert isinstance(opened, dict) and opened["customer"] == cid
    listed = _json(run("request", "list", "--due-within", "30d", "--json"))
    assert [r["id"] for r in listed] == [opened["id"]]  # type: ignore[index]
    receipt = tmp_path / "receipt.json"
    closed = _json(sh("request", "close", opened["id"], "--outcome", "fulfilled",
                      "--receipt-out", str(receipt), "--json"))  # fmt: skip
    assert closed["request"]["customer"] is None  # type: ignore[index]
    pubkey = tmp_path / "vault.pub"
    pubkey.write_text(run("audit", "pubkey").stdout)
    verified = sh("receipt", "verify", str(receipt), "--pubkey", str(pubkey), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = _json(run("audit", "report", "--json"))
    assert report["requests"]["closed_in_time"] == 1  # type: ignore[index]
    everything = run("request", "list").stdout + run("audit", "query", "--json").stdout
    assert "secret note 4411" not in everything


def test_consent_and_notices_gate_the_handover(run: Run, tmp_path: Path) -> None:
    sh = run
    cid = sh("customer", "add", "--consent", "transfer=yes").stdout.strip()
    assert _json(sh("consent", "set", cid, "news=yes", "--channel", "web", "--json")) == {
        "news": True,
        "transfer": True,
    }
    out = tmp_path / "notices"
    out.mkdir()
    batch = _json(sh("notice", "prepare", "--reason", "transfer", "--effective", "2099-01-01",
                     "--recipient", "Acme Ltd", "--out", str(out), "--json"))  # fmt: skip
    (notice,) = batch["notices"]  # type: ignore[index]
    assert sorted(p.suffix for p in out.iterdir()) == [".json", ".md"]
    delivered = sh("notice", "delivered", cid, "--notice", notice["id"], "--channel", "email",
                   "--json")  # fmt: skip
    assert _json(delivered)["delivered"]  # type: ignore[index]
    pub, _key, _fp = handover_keygen(tmp_path / "acq", b"acq pass", params=FLOOR)
    refused = sh("handover", "export", "--to", str(pub), "--out", str(tmp_path / "pkg"),
                 "--require-notice-window", "--json")  # fmt: skip
    assert refused.exit_code == 1
    error = json.loads(refused.stderr.strip().splitlines()[-1])
    assert cid in json.dumps(error) and not (tmp_path / "pkg").exists()


def test_bad_request_input_is_a_json_error(run: Run) -> None:
    bad = run("request", "close", "req_nonsense", "--outcome", "fulfilled", "--json")
    assert bad.exit_code == 4
    assert "error" in json.loads(bad.stderr.strip().splitlines()[-1])
    usage = run("request", "list", "--due-within", "soon")
    assert usage.exit_code == 2


def test_every_new_command_has_help(run: Run) -> None:
    for args in (
        ("request", "open"),
        ("request", "list"),
        ("request", "close"),
        ("request", "policy", "set"),
        ("request", "policy", "show"),
        ("consent", "set"),
        ("notice", "prepare"),
        ("notice", "delivered"),
        ("notice", "objected"),
    ):
        assert run(*args, "--help").exit_code == 0, args


def test_an_erasure_receipt_is_never_dropped_and_a_bad_path_is_refused_first(
    run: Run, tmp_path: Path
) -> None:
    sh = _shell(tmp_path)
    cid = run("customer", "add").stdout.strip()
    opened = _json(sh("request", "open", cid, "--type", "erasure", "--channel", "email",
                      "--json"))  # fmt: skip
    rid = opened["id"]  # type: ignore[index]
    # a directory that does not exist: refused (exit 2) before the shred, not after it
    missing = tmp_path / "no-such-dir" / "receipt.json"
    refused = sh("request", "close", rid, "--outcome", "fulfilled", "--receipt-out", str(missing))
    assert refused.returncode == 2 and "--receipt-out" in refused.stderr
    assert _json(run("customer", "show", cid, "--json"))["state"] == "active"  # type: ignore[index]
    # no --receipt-out: the receipt used to be dropped ("was not kept"); it is printed
    closed = sh("request", "close", rid, "--outcome", "fulfilled")
    assert closed.returncode == 0, closed.stderr
    receipt = tmp_path / "printed.json"
    receipt.write_text(closed.stdout)
    pubkey = tmp_path / "vault.pub"
    pubkey.write_text(run("audit", "pubkey").stdout)
    verified = sh("receipt", "verify", str(receipt), "--pubkey", str(pubkey), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    (listed,) = _json(run("request", "list", "--json"))  # type: ignore[misc]
    digest = hashlib.sha256(receipt.read_bytes()).hexdigest()
    assert listed["receipt"]["sha256"] == digest  # the printed receipt is the one recorded
    assert run("audit", "verify").exit_code == 0


def test_a_note_can_come_from_stdin_so_it_stays_out_of_the_process_list(
    run: Run, tmp_path: Path
) -> None:
    cid = run("customer", "add").stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")}
    env.update(
        SHREDVAULT_KEYFILE=str(tmp_path / "vault.key"), SHREDVAULT_VAULT=str(tmp_path / "vault")
    )

    def open_with(note: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*_command(), "request", "open", cid, "--type", "access", "--channel", "phone",
             "--note", "-", "--json"],
            input=note, capture_output=True, env=env, timeout=120, check=False,
        )  # fmt: skip

    done = open_with(b"called from +44 20 7946 0000\n")
    assert done.returncode == 0, done.stderr
    assert b"7946" not in done.stdout + done.stderr
    too_long = open_with(b"x" * 5000)
    assert too_long.returncode == 1 and b"xxxx" not in too_long.stderr
    not_text = open_with(b"\xff\xfe")
    assert not_text.returncode == 2 and b"UTF-8" in not_text.stderr
    listed = _json(run("request", "list", "--json"))
    assert isinstance(listed, list) and len(listed) == 1
    everything = run("request", "list").stdout + run("audit", "query", "--json").stdout
    assert "7946" not in everything
