"""Issue 18, the rest of the input layer: a typo in ``audit query --actor`` is refused
with the closest names (as --action and --role are: a breach-scope answer of "nobody"
for a misspelt name is a wrong answer), and a log export's lines are read at most
MAX_DOCUMENT_BYTES at a time (one endless line is refused, not read into memory)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest

from shredvault.vault import SchemaError, Vault, VerificationError
from shredvault.vault.audit import verify_export
from shredvault.vault.inputs import MAX_DOCUMENT_BYTES, read_lines

from clirun import make_run


@pytest.fixture
def vault(tmp_path: Path, keyfile: Path) -> Vault:
    v = Vault.create(tmp_path / "vault", keyfile=keyfile)
    v.declare_kind("profile", fields=["name"], purposes=["service"])
    s = v.admin()
    s.add_principal("opal", role="auditor")
    s.add_principal("quartz", role="auditor")
    s.revoke_principal("quartz")
    customer = s.add_customer()
    s.put(customer, "profile", {"name": "Ama"}, purpose="service")
    return v


def test_a_misspelt_actor_is_refused_with_the_closest_names(vault: Vault) -> None:
    s = vault.admin()
    head = vault.head.seq
    with pytest.raises(SchemaError, match=r"unknown actor: 'opla' \(did you mean opal\?\)"):
        s.audit_query(actor="opla")
    assert vault.head.seq == head  # refused before anything was logged
    # Real names answer: a principal, a revoked one, the administrator.
    assert s.audit_query(actor="opal")["per_action"] == {}
    assert s.audit_query(actor="quartz")["per_action"] == {}
    assert s.audit_query(actor="admin")["per_action"]["record.put"] == 1
    vault.close()


def test_the_cli_refuses_a_misspelt_actor_with_exit_1(
    vault: Vault, tmp_path: Path, keyfile: Path
) -> None:
    vault.close()
    run = make_run(tmp_path / "vault", keyfile)
    done = run("audit", "query", "--actor", "admn")
    assert done.exit_code == 1
    assert "unknown actor" in done.stderr and "did you mean admin?" in done.stderr
    assert "customers touched" not in done.stdout
    assert run("audit", "query", "--actor", "admin").exit_code == 0


def _export(vault: Vault, tmp_path: Path, keyfile: Path) -> Path:
    vault.close()
    out = tmp_path / "log.jsonl"
    done = make_run(tmp_path / "vault", keyfile)("audit", "export", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert verify_export(out, trust_embedded_key=True).ok
    return out


@pytest.mark.parametrize("where", ["header", "middle", "end"])
def test_an_export_line_longer_than_the_limit_is_refused_as_malformed(
    vault: Vault, tmp_path: Path, keyfile: Path, where: str
) -> None:
    out = _export(vault, tmp_path, keyfile)
    lines = out.read_bytes().splitlines(keepends=True)
    endless = b'{"x":"' + b"a" * MAX_DOCUMENT_BYTES + b'"}'
    if where == "header":
        lines = [endless]  # one endless line, no newline at all
    elif where == "middle":
        lines.insert(len(lines) // 2, endless + b"\n")
    else:
        lines.append(endless)
    out.write_bytes(b"".join(lines))
    with pytest.raises(VerificationError, match="longer than 1,048,576 bytes") as caught:
        verify_export(out, trust_embedded_key=True)
    assert caught.value.reason == "malformed"
    cli = make_run(tmp_path / "vault", keyfile)
    done = cli("audit", "verify", "--from-export", str(out), "--trust-embedded-key")
    assert done.exit_code == 5 and "longer than" in done.stderr


def test_a_line_of_exactly_the_limit_is_read() -> None:
    exact = b"a" * MAX_DOCUMENT_BYTES + b"\n"
    assert list(read_lines(BytesIO(exact + b"b"), what="t")) == [exact, b"b"]
    with pytest.raises(VerificationError, match="line 2 is longer"):
        list(read_lines(BytesIO(b"ok\n" + b"a" * (MAX_DOCUMENT_BYTES + 1)), what="t"))
