"""The one file writer (keys/files.py, docs/files.md) and every file shredvault writes.

Each file is 0600 from the moment it exists whatever the umask (seen from another
process while a child is stopped half-way through writing it), is never written over an
existing file unless that was asked for, leaves no temporary behind after success or
failure, and is not written over a file that appears while it is being written. Real
files and real child processes throughout; nothing is mocked."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from shredvault import vault
from shredvault.keys import FLOOR
from shredvault.keys import errors as keys_errors
from shredvault.keys import files as writer
from shredvault.vault import Vault, handover_keygen

from processes import CRASH_EXIT_CODE, paused_python, run_python

PURPOSE = "service"
KEY_PASSPHRASE = b"acquirer lantern 4471 harbour"
PARTIAL = writer.PARTIAL_SUFFIX
NOT_ROOT = os.geteuid() != 0


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def leftovers(directory: Path) -> list[str]:
    """Every writer temporary under ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(f"*{PARTIAL}"))


# -- the writer itself ------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o277, 0o777], ids=oct)
def test_write_file_makes_an_owner_only_file_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    target = tmp_path / "secret.json"
    with umask(mask):
        writer.write_file(target, b'{"k": 1}\n')
    assert mode(target) == 0o600
    assert target.read_bytes() == b'{"k": 1}\n'


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o277], ids=oct)
def test_create_file_makes_an_owner_only_file_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    target = tmp_path / "archive.tar"
    with umask(mask), writer.create_file(target) as out:
        out.write(b"a" * 100_000)
        assert mode(writer.partial_path(target)) == 0o600  # already, while being written
        assert not target.exists()
    assert mode(target) == 0o600 and target.stat().st_size == 100_000


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o277], ids=oct)
def test_create_empty_makes_an_owner_only_file_whatever_the_umask(
    tmp_path: Path, mask: int
) -> None:
    with umask(mask):
        writer.create_empty(tmp_path / "keys.db")
    assert mode(tmp_path / "keys.db") == 0o600 and (tmp_path / "keys.db").stat().st_size == 0


def test_write_file_refuses_an_existing_file_and_leaves_it_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "receipt.json"
    target.write_bytes(b"theirs\n")
    os.chmod(target, 0o644)
    with pytest.raises(keys_errors.OutputExistsError) as caught:
        writer.write_file(target, b"ours\n")
    assert isinstance(caught.value, FileExistsError) and caught.value.path == str(target)
    assert str(target) in str(caught.value) and "move it away" in str(caught.value)
    assert target.read_bytes() == b"theirs\n" and mode(target) == 0o644
    assert leftovers(tmp_path) == []


def test_write_file_refuses_a_dangling_symlink_at_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(keys_errors.OutputExistsError):
        writer.write_file(target, b"data")
    assert not (tmp_path / "nowhere").exists() and target.is_symlink()


def test_overwrite_replaces_the_file_only_when_asked_and_makes_it_owner_only(
    tmp_path: Path,
) -> None:
    target = tmp_path / "summary.json"
    target.write_bytes(b"old\n")
    os.chmod(target, 0o644)
    writer.write_file(target, b"new\n", overwrite=True)
    assert target.read_bytes() == b"new\n" and mode(target) == 0o600
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_a_symlink_itself_never_the_file_it_points_to(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    target = tmp_path / "export.jsonl"
    target.symlink_to(victim)
    writer.write_file(target, b"log", overwrite=True)
    assert not target.is_symlink() and target.read_bytes() == b"log"
    assert victim.read_bytes() == b"untouched"


def test_a_symlink_planted_at_the_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    target = tmp_path / "report.json"
    writer.partial_path(target).symlink_to(victim)
    with pytest.raises(keys_errors.OutputExistsError):
        writer.write_file(target, b"personal data")
    assert victim.read_bytes() == b"untouched" and not target.exists()
    assert writer.partial_path(target).is_symlink()


def test_nothing_is_left_when_the_writing_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "package.svho"
    with pytest.raises(RuntimeError), writer.create_file(target) as out:
        out.write(b"half a package")
        raise RuntimeError("the export failed")
    assert sorted(os.listdir(tmp_path)) == []


def test_nothing_is_left_after_success(tmp_path: Path) -> None:
    writer.write_file(tmp_path / "a", b"1")
    with writer.create_file(tmp_path / "b") as out:
        out.write(b"2")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_missing_directory_is_an_oserror_naming_the_target(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "cert.json"
    with pytest.raises(FileNotFoundError) as caught:
        writer.write_file(target, b"x")
    assert caught.value.filename == str(target)


def test_move_into_place_never_replaces_and_keeps_the_source(tmp_path: Path) -> None:
    with writer.create_file(tmp_path / "staged") as out:
        out.write(b"restored")
    (tmp_path / "keys.db").write_bytes(b"live")
    with pytest.raises(keys_errors.OutputExistsError):
        writer.move_into_place(tmp_path / "staged", tmp_path / "keys.db")
    assert (tmp_path / "keys.db").read_bytes() == b"live"
    assert (tmp_path / "staged").read_bytes() == b"restored"
    writer.move_into_place(tmp_path / "staged", tmp_path / "new.db")
    assert sorted(os.listdir(tmp_path)) == ["keys.db", "new.db"]


_WRITE_ONE = """
import os, sys
from shredvault.keys import files
os.umask(int(sys.argv[3], 8))
files.write_file(sys.argv[1], sys.argv[2].encode() * 1000)
"""


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277], ids=oct)
def test_the_file_is_owner_only_while_being_written_seen_from_another_process(
    tmp_path: Path, mask: int
) -> None:
    target = tmp_path / "receipt.json"
    with paused_python(
        _WRITE_ONE,
        str(target),
        "x",
        oct(mask),
        pause_at="files:partly-written:receipt.json",
        pause_dir=tmp_path / "pause",
    ) as child:
        partial = writer.partial_path(target)
        assert mode(partial) == 0o600
        assert partial.stat().st_size == 500  # half written
        assert not target.exists()
        done = child.release()
    assert done.returncode == 0, done.stderr
    assert mode(target) == 0o600 and target.read_bytes() == b"x" * 1000
    assert leftovers(tmp_path) == []


def test_a_temporary_left_by_a_crashed_writer_is_removed_by_the_next_write(
    tmp_path: Path,
) -> None:
    target = tmp_path / "report.json"
    crashed = run_python(
        _WRITE_ONE, str(target), "x", "022", crash_at="files:partly-written:report.json"
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert mode(writer.partial_path(target)) == 0o600 and not target.exists()
    writer.write_file(target, b"complete")
    assert target.read_bytes() == b"complete" and leftovers(tmp_path) == []


def test_a_second_live_writer_of_the_same_file_is_refused_not_raced(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    with paused_python(
        _WRITE_ONE,
        str(target),
        "a",
        "022",
        pause_at="files:partly-written:summary.json",
        pause_dir=tmp_path / "pause",
    ) as child:
        partial = writer.partial_path(target)
        before = os.stat(partial)
        with pytest.raises(keys_errors.OutputExistsError, match="being written by another"):
            writer.write_file(target, b"b")
        assert os.path.samestat(before, os.stat(partial))  # the live one was left alone
        done = child.release()
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == b"a" * 1000 and leftovers(tmp_path) == []


_WRITE_AND_REPORT = """
import sys
from shredvault.vault import write_file
try:
    write_file(sys.argv[1], b"ours")
except FileExistsError as error:
    print(type(error).__module__, type(error).__name__)
    sys.exit(3)
"""


def test_a_file_that_appears_before_publishing_is_not_overwritten(tmp_path: Path) -> None:
    """The race the old exists()-then-replace writers lost: link() fails atomically."""
    target = tmp_path / "receipt.json"
    with paused_python(
        _WRITE_AND_REPORT,
        str(target),
        pause_at="files:before-publish:receipt.json",
        pause_dir=tmp_path / "pause",
    ) as child:
        assert mode(writer.partial_path(target)) == 0o600
        target.write_bytes(b"theirs")
        done = child.release()
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == ["shredvault.vault.errors", "OutputExistsError"]
    assert target.read_bytes() == b"theirs"
    assert leftovers(tmp_path) == []


# -- every file shredvault writes -------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A copy of a small vault with what each writer needs: two customers (``c2``
    consents to transfer), a handover package of it, a backup archive, an acquirer key."""

    base: Path

    @property
    def ids(self) -> dict[str, str]:
        loaded: dict[str, str] = json.loads((self.base / "ids.json").read_text())
        return loaded

    @property
    def out(self) -> Path:
        return self.base / "out"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("files")
    vault.generate_keyfile(base / "vault.key")
    with Vault.create(base / "vault", keyfile=base / "vault.key") as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        s = v.admin()
        c1 = s.add_customer(consent={"transfer": False})
        c2 = s.add_customer(consent={"transfer": True})
        s.put(c1, "profile", {"name": "Ingrid Halvorsen"}, purpose=PURPOSE)
        s.put(c2, "profile", {"name": "Tomás Ferreira"}, purpose=PURPOSE)
        buyer = bytes(PrivateKey.generate().public_key)
        s.handover_export(buyer, str(base / "package.svho"))
        s.backup(str(base / "backup.svb"))
    (base / "ids.json").write_text(json.dumps({"c1": c1, "c2": c2}))
    return base


@pytest.fixture
def world(template: Path, tmp_path: Path) -> World:
    base = tmp_path / "world"
    shutil.copytree(template, base)
    (base / "out").mkdir()
    return World(base)


# One child program writes any of the kinds named on its command line, in order, under
# the umask given: the parent then inspects what it wrote, or what a crash left.
_WRITE_KINDS = """
import json, os, sys
from pathlib import Path
base, mask, kinds = Path(sys.argv[1]), int(sys.argv[2], 8), sys.argv[3:]
os.umask(mask)
from shredvault.keys import FLOOR
from shredvault.vault import Vault, ShredSource, generate_keyfile, handover_keygen, restore_backup
from shredvault.cli.main import cli
root, keyfile, out = base / "vault", base / "vault.key", base / "out"
ids = json.loads((base / "ids.json").read_text())

def run_cli(*args):
    cli.main(
        args=["--vault", str(root), "--keyfile", str(keyfile), *args],
        prog_name="shredvault",
        standalone_mode=False,
    )

for kind in kinds:
    if kind == "keyfile":
        generate_keyfile(out / "new.key")
    elif kind == "handover key":
        handover_keygen(out / "buyer", b"acquirer lantern 4471 harbour", params=FLOOR)
    elif kind == "vault stores":
        Vault.create(out / "fresh", keyfile=keyfile).close()
    elif kind == "subject report":
        run_cli("customer", "report", ids["c2"], "--out", str(out / "report.json"))
    elif kind == "log export":
        run_cli("audit", "export", "--replace", "--out", str(out / "log.jsonl"))
    elif kind == "restored stores":
        restore_backup(
            base / "backup.svb", out / "restored", keyfile=keyfile,
            source=ShredSource(vault_dir=root),
        )
    else:
        with Vault.open(root, keyfile=keyfile) as v:
            s = v.admin()
            if kind == "erasure receipt":
                s.shred(ids["c1"], reason="erasure request").write(out / "receipt.json")
            elif kind == "backup archive":
                s.backup(str(out / "backup.svb"))
            elif kind == "handover package":
                pub = bytes(32 * [9])
                s.handover_export(pub, str(out / "package.svho"))
            elif kind == "handover summary":
                done = s.handover_complete(str(base / "package.svho"))
                target = out / "summary.json"
                done.write(target, replace=target.exists())
            elif kind == "decommission certificate":
                s.decommission(
                    reason="deregistered", on_certificate=lambda c: c.write(out / "cert.json")
                )
            else:
                raise SystemExit(f"unknown kind {kind}")
"""

# Every kind, in an order one vault can go through, and the files it writes.
KINDS: dict[str, list[str]] = {
    "keyfile": ["new.key"],
    "handover key": ["buyer.key", "buyer.pub"],
    "vault stores": ["fresh/data.db", "fresh/keys.db"],
    "subject report": ["report.json"],
    "erasure receipt": ["receipt.json"],
    "log export": ["log.jsonl"],
    "backup archive": ["backup.svb"],
    "handover package": ["package.svho"],
    "restored stores": ["restored/data.db", "restored/keys.db"],
    "handover summary": ["summary.json"],
    "decommission certificate": ["cert.json", "cert.md"],
}


def write_kinds(world: World, mask: int, *kinds: str, crash_at: str | None = None) -> str:
    done = run_python(_WRITE_KINDS, str(world.base), oct(mask), *kinds, crash_at=crash_at)
    if crash_at is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == CRASH_EXIT_CODE, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "mask",
    [
        0o022,
        0o000,
        pytest.param(
            0o277,
            marks=pytest.mark.skipif(
                NOT_ROOT,
                reason="under umask 0o277 new directories (backup's work folder, the "
                "restore's staging) are not writable by a non-root owner",
            ),
        ),
    ],
    ids=oct,
)
def test_every_file_shredvault_writes_is_owner_only_whatever_the_umask(
    world: World, mask: int
) -> None:
    (world.out / "restored").mkdir(mode=0o700)  # directories are not the writer's business
    (world.out / "fresh").mkdir(mode=0o700)
    write_kinds(world, mask, *KINDS)
    modes = {name: mode(world.out / name) for names in KINDS.values() for name in names}
    assert modes == dict.fromkeys(modes, 0o600)
    assert leftovers(world.base) == []


def test_sqlite_side_files_take_the_owner_only_mode_of_the_store(tmp_path: Path) -> None:
    keyfile = tmp_path / "vault.key"
    vault.generate_keyfile(keyfile)
    with umask(0o000), Vault.create(tmp_path / "v", keyfile=keyfile) as v:
        v.declare_kind("profile", fields=["name"], purposes=[PURPOSE])
        side = sorted(
            p.name for p in (tmp_path / "v").iterdir() if p.name.endswith(("-wal", "-shm"))
        )
        assert side  # WAL mode: they exist while the vault is open
        modes = {name: mode(tmp_path / "v" / name) for name in side}
    assert modes == dict.fromkeys(modes, 0o600)


@dataclass(frozen=True)
class Crash:
    kind: str
    point: str  # the writer's crash point, named for the file
    temporary: str  # where the unpublished file is, relative to out/
    target: str  # where it would have been published


CRASHES = [
    Crash("keyfile", "files:partly-written:new.key", f".new.key{PARTIAL}", "new.key"),
    Crash("handover key", "files:partly-written:buyer.key", f".buyer.key{PARTIAL}", "buyer.key"),
    Crash("handover key", "files:partly-written:buyer.pub", f".buyer.pub{PARTIAL}", "buyer.pub"),
    Crash(
        "subject report",
        "files:partly-written:report.json",
        f".report.json{PARTIAL}",
        "report.json",
    ),
    Crash(
        "erasure receipt",
        "files:partly-written:receipt.json",
        f".receipt.json{PARTIAL}",
        "receipt.json",
    ),
    Crash("log export", "files:before-publish:log.jsonl", f".log.jsonl{PARTIAL}", "log.jsonl"),
    Crash(
        "backup archive", "files:before-publish:backup.svb", f".backup.svb{PARTIAL}", "backup.svb"
    ),
    Crash(
        "handover package",
        "files:before-publish:package.svho",
        f".package.svho{PARTIAL}",
        "package.svho",
    ),
    Crash(
        "restored stores",
        "files:before-publish:data.db",
        f"restored/.restore-staging/.data.db{PARTIAL}",
        "restored/data.db",
    ),
    Crash(
        "restored stores",
        "files:before-publish:keys.db",
        f"restored/.restore-staging/.keys.db{PARTIAL}",
        "restored/keys.db",
    ),
    Crash(
        "handover summary",
        "files:partly-written:summary.json",
        f".summary.json{PARTIAL}",
        "summary.json",
    ),
    Crash(
        "decommission certificate",
        "files:partly-written:cert.json",
        f".cert.json{PARTIAL}",
        "cert.json",
    ),
    Crash(
        "decommission certificate",
        "files:partly-written:cert.md",
        f".cert.md{PARTIAL}",
        "cert.md",
    ),
]


@pytest.mark.parametrize("crash", CRASHES, ids=lambda c: c.point.split(":")[-1])
def test_a_file_cut_off_while_being_written_is_owner_only_and_unpublished(
    world: World, crash: Crash
) -> None:
    """Under umask 0: a child killed half-way leaves only a 0600 temporary, never the
    file itself, and never a file readable by others."""
    write_kinds(world, 0o000, crash.kind, crash_at=crash.point)
    assert mode(world.out / crash.temporary) == 0o600
    assert not (world.out / crash.target).exists()


@pytest.mark.parametrize(
    ("kind", "point", "name"),
    [
        ("handover summary", "files:partly-written:summary.json", "summary.json"),
        ("log export", "files:before-publish:log.jsonl", "log.jsonl"),
    ],
)
def test_a_cut_off_rewrite_leaves_the_existing_file_untouched(
    world: World, kind: str, point: str, name: str
) -> None:
    """The two outputs a rerun replaces (a completion summary, a log export): until
    the new one is complete and published, the old one is there, whole."""
    write_kinds(world, 0o022, kind)
    before = (world.out / name).read_bytes()
    write_kinds(world, 0o022, kind, crash_at=point)
    assert (world.out / name).read_bytes() == before and mode(world.out / name) == 0o600
    assert mode(world.out / f".{name}{PARTIAL}") == 0o600


# -- refusals through the vault's API: one error, from the vault's tree ----------------------


def test_every_vault_writer_refuses_an_existing_file_with_the_vaults_error(world: World) -> None:
    out, ids = world.out, world.ids
    taken = {name: out / name for name in ("r.json", "c.json", "s.json", "b.svb", "p.svho")}
    taken |= {"buyer.pub": out / "buyer.pub", "new.key": out / "new.key"}
    for path in taken.values():
        path.write_bytes(b"someone else's file")
    with Vault.open(world.base / "vault", keyfile=world.base / "vault.key") as v:
        s = v.admin()
        receipt = s.shred(ids["c1"], reason="erasure request")
        completion = s.handover_complete(str(world.base / "package.svho"))
        writes = {
            "receipt": lambda: receipt.write(taken["r.json"]),
            "summary": lambda: completion.write(taken["s.json"]),
            "backup": lambda: s.backup(str(taken["b.svb"])),
            "package": lambda: s.handover_export(bytes(32), str(taken["p.svho"])),
            "handover key": lambda: handover_keygen(out / "buyer", KEY_PASSPHRASE, params=FLOOR),
            "keyfile": lambda: vault.generate_keyfile(taken["new.key"]),
            "write_file": lambda: vault.write_file(taken["r.json"], b"x"),
        }
        refused = {}
        for name, write in writes.items():
            with pytest.raises(vault.OutputExistsError) as caught:
                write()
            error = caught.value
            refused[name] = isinstance(error, vault.StorageError) and isinstance(
                error, FileExistsError
            )
    assert refused == dict.fromkeys(writes, True)
    assert {p.read_bytes() for p in taken.values()} == {b"someone else's file"}
    assert leftovers(world.base) == []


def test_a_certificate_is_refused_over_other_content_with_the_vaults_error(world: World) -> None:
    with Vault.open(world.base / "vault", keyfile=world.base / "vault.key") as v:
        certificate = v.admin().decommission(reason="deregistered")
    (world.out / "cert.md").write_text("other")
    with pytest.raises(vault.OutputExistsError):
        certificate.write(world.out / "cert.json")
    assert not (world.out / "cert.json").exists()
    assert (world.out / "cert.md").read_text() == "other"


# -- the CLI ---------------------------------------------------------------------------------

_CLI = """
import sys
from shredvault.cli.main import main
sys.argv = ["shredvault", *sys.argv[1:]]
main()
"""


def test_a_receipt_file_that_appears_mid_shred_is_kept_and_the_receipt_printed(
    world: World,
) -> None:
    """``shred --receipt FILE`` checks FILE is free before shredding; if it appears
    after that check, the receipt is not written over it: exit 1, the receipt on stdout."""
    target = world.out / "receipt.json"
    args = ["--vault", str(world.base / "vault"), "--keyfile", str(world.base / "vault.key")]
    with paused_python(
        _CLI,
        *args,
        "shred",
        world.ids["c1"],
        "--reason",
        "erasure request",
        "--yes",
        "--receipt",
        str(target),
        pause_at="files:before-publish:receipt.json",
        pause_dir=world.base / "pause",
    ) as child:
        target.write_text("someone else's file")
        done = child.release()
    assert done.returncode == 1, done.stderr
    assert "already exists" in done.stderr and str(target) in done.stderr
    assert json.loads(done.stdout)[0]["customer"] == world.ids["c1"]
    assert target.read_text() == "someone else's file"
    assert leftovers(world.base) == []
