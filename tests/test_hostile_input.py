"""Issue 18 items 1 and 2: hostile arguments and environment, each finding a named
regression test. Real processes, given raw bytes as a shell would pass them: the exit
code is a documented one, the message one line without the offending bytes, and a
failed command leaves data.db and keys.db byte-identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shredvault.vault import SchemaError, Vault

PASSPHRASE = b"correct horse battery staple"


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def shredvault(
    *args: str | bytes, root: Path, env: dict[str, str | bytes] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The CLI on ``root``, unlocked with the test passphrase unless ``env`` says else."""
    base: dict[str | bytes, str | bytes] = {
        k: v for k, v in os.environ.items() if not k.startswith("SHREDVAULT_")
    }
    base.update({"SHREDVAULT_VAULT": str(root), "SHREDVAULT_PASSPHRASE": PASSPHRASE})
    base.update(env or {})
    environ = {os.fsencode(k): os.fsencode(v) for k, v in base.items()}
    return subprocess.run(
        [sys.executable, "-m", "shredvault", *args],
        env=environ,  # type: ignore[arg-type]
        capture_output=True,
        timeout=120,
        check=False,
    )


def one_clean_line(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode("utf-8")
    assert "Traceback" not in err and done.stdout == b""
    return err


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("hostile") / "vault"
    with Vault.create(root, passphrase=PASSPHRASE) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        customer = v.admin().add_customer()
        v.admin().put(customer, "profile", {"name": "Ana"}, purpose="service")
    return root, customer


def test_a_shred_reason_of_invalid_utf8_exits_2_before_keys_db_is_touched(
    vault: tuple[Path, str],
) -> None:
    root, customer = vault
    before = snapshot(root)
    done = shredvault("shred", customer, "--reason", b"erasure \xff\xfe", "--yes", root=root)
    assert done.returncode == 2
    assert "not valid UTF-8" in one_clean_line(done)
    assert snapshot(root) == before


def test_a_passphrase_of_invalid_utf8_in_the_environment_is_not_echoed(
    vault: tuple[Path, str],
) -> None:
    root, _customer = vault
    before = snapshot(root)
    done = shredvault("customer", "list", root=root, env={"SHREDVAULT_PASSPHRASE": b"s3cr\xe9t"})
    assert done.returncode == 2
    err = one_clean_line(done)
    assert "SHREDVAULT_PASSPHRASE is not valid UTF-8" in err
    for leak in ("0xe9", "\\xe9", "position", "s3cr"):
        assert leak not in err
    assert snapshot(root) == before


def test_a_token_of_invalid_utf8_is_refused_before_anything(vault: tuple[Path, str]) -> None:
    root, _customer = vault
    before = snapshot(root)
    for how in ("argument", "environment"):
        token = b"svt_0123456789abcdef_\xff"
        done = (
            shredvault("--token", token, "customer", "list", root=root)
            if how == "argument"
            else shredvault("customer", "list", root=root, env={"SHREDVAULT_TOKEN": token})
        )
        assert done.returncode == 2, how
        assert "not valid UTF-8" in one_clean_line(done)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "args",
    [
        ["backup", "create", "{tmp}/b.tar", "--expires", "nan"],
        ["backup", "create", "{tmp}/b.tar", "--expires", "inf"],
        ["backup", "create", "{tmp}/b.tar", "--expires", "1e308"],
        ["keys", "rotate-dek", "--older-than", "inf"],
        ["keys", "rotate-dek", "--older-than", "-1"],
        ["customer", "add", "--retain-until", "9999-12-31T23:59:59-23:59"],
        ["customer", "add", "--retain-until", "0001-01-01"],
        ["customer", "add", "--retain-until", "2027-01-31T12:00:00"],
        ["principal", "add", "ines", "--role", "operator", "--expires", "nan"],
        ["audit", "query", "--since", "yesterday"],
        ["audit", "query", "--until", "99999-01-01"],
    ],
    ids=lambda a: " ".join(a[:4]),
)
def test_bad_numbers_and_dates_exit_2_and_change_nothing(
    vault: tuple[Path, str], tmp_path: Path, args: list[str]
) -> None:
    root, _customer = vault
    before = snapshot(root)
    done = shredvault(*[a.format(tmp=tmp_path) for a in args], root=root)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr.decode()
    assert snapshot(root) == before
    assert not (tmp_path / "b.tar").exists()


def test_one_date_parser_accepts_a_plain_date_everywhere(vault: tuple[Path, str]) -> None:
    root, _customer = vault
    for args in (
        ["audit", "query", "--since", "2020-01-01", "--until", "2999-01-01T00:00:00Z"],
        ["customer", "add", "--retain-until", "2031-06-30"],
    ):
        done = shredvault(*args, root=root)
        assert done.returncode == 0, done.stderr


def test_a_name_with_a_trailing_newline_is_refused(vault: tuple[Path, str]) -> None:
    root, _customer = vault
    done = shredvault("principal", "add", "opal\n", "--role", "operator", root=root)
    assert done.returncode == 1 and b"principal name must be" in done.stderr
    with Vault.open(root, passphrase=PASSPHRASE) as v:
        assert "opal\n" not in {p.name for p in v.admin().list_principals()}


def test_typos_in_a_role_are_refused_with_the_closest_names(vault: tuple[Path, str]) -> None:
    root, _customer = vault
    before = snapshot(root)
    kinds = shredvault("role", "add", "helpdesk", "--actions", "read", "--kinds", "profil",
                       root=root)  # fmt: skip
    assert kinds.returncode == 1 and b"did you mean profile?" in kinds.stderr
    fields = shredvault(
        "role", "add", "helpdesk", "--actions", "read", "--kinds", "profile",
        "--fields", "profile.nmae", root=root,
    )  # fmt: skip
    assert fields.returncode == 1 and b"did you mean name?" in fields.stderr
    purposes = shredvault(
        "role", "add", "helpdesk", "--actions", "read", "--purposes", "servce", root=root
    )
    assert purposes.returncode == 1 and b"did you mean service?" in purposes.stderr
    after = snapshot(root)
    with Vault.open(root, passphrase=PASSPHRASE) as v:
        assert "helpdesk" not in {r.name for r in v.admin().list_roles()}
    assert after.keys() == before.keys()


def test_a_typo_in_the_breach_scope_action_is_refused_not_answered(
    vault: tuple[Path, str],
) -> None:
    root, _customer = vault
    done = shredvault("audit", "query", "--action", "record.gett", root=root)
    assert done.returncode == 1
    assert b"unknown action" in done.stderr and b"did you mean record.get" in done.stderr
    assert b"customers touched" not in done.stdout
    real = shredvault("audit", "query", "--action", "record.put", "--json", root=root)
    assert real.returncode == 0, real.stderr


def test_library_arguments_of_invalid_unicode_are_schema_errors_with_nothing_written(
    tmp_path: Path, keyfile: Path
) -> None:
    root = tmp_path / "lib"
    with Vault.create(root, keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=["service"])
        s = v.admin()
        customer = s.add_customer()
    with Vault.open(root, keyfile=keyfile) as v:
        s = v.admin()
        with pytest.raises(SchemaError, match="not valid Unicode"):
            s.shred(customer, reason="erasure \udcff")
        # The finding: the receipt's salt stayed in keys.db until the next open.
        assert v._ctx.keys.store.receipt_salt_customers() == []
        with pytest.raises(SchemaError, match="not valid Unicode"):
            s.add_customer(ref="crm-\udcff")
        assert [c.id for c in s.list_customers()] == [customer]
        assert s.customer(customer).state == "active"
