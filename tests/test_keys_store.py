"""The keystore and key ring on a real ``keys.db`` (DESIGN §2, §3, §4, §7), and signing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from shredvault.keys import (
    FLOOR,
    DecryptionError,
    Envelope,
    InvalidKeyError,
    KdfParams,
    KeyRing,
    KeyStore,
    KeystoreError,
    SecretBytes,
    Signer,
    WeakParametersError,
    WrongKeyError,
    fingerprint,
    generate_keyfile,
    load_keyfile,
    record_aad,
    verify_signature,
)
from shredvault.keys.envelope import blob_key_version, dek_aad, kek_aad
from shredvault.keys.erasure import scrub_every
from shredvault.keys.store import SCHEMA_VERSION, DekRow, KeystoreHeader
from shredvault.keys.subkeys import ROOT_WRAP, derive_subkey

VAULT = "vlt_store"
CREATED = "2024-01-01T00:00:00.000000Z"
PASSPHRASE = b"correct horse battery staple"
ROOT_KEY_VERSION = 0  # wrapped KEKs and signing seeds name version 0: the root has none


def customer(i: int) -> str:
    return f"cus_{i:026d}"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_keystore(path: Path, sql: str, *params: object) -> None:
    """Change a closed keystore behind the library's back, as an attacker or bit rot would."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(sql, params)
        conn.commit()


def keystore_files(path: Path) -> dict[str, bytes]:
    """The bytes of keys.db and of its -wal and -shm files, where they exist."""
    out = {}
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(str(path) + suffix)
        if candidate.exists():
            out[candidate.name] = candidate.read_bytes()
    return out


def unwrap_dek_by_hand(ring: KeyRing, root: SecretBytes, customer_id: str) -> bytes:
    """The raw DEK of a customer, unwrapped root (its wrap subkey) -> KEK -> DEK with only
    the envelope API."""
    (row,) = ring.store.deks([customer_id])
    wrapped_kek = ring.store.epochs()[row.epoch]
    wrap = Envelope(derive_subkey(root, ROOT_WRAP, ring.vault_id), ROOT_KEY_VERSION)
    kek = wrap.open(wrapped_kek, kek_aad(ring.vault_id, row.epoch))
    return Envelope(SecretBytes(kek), row.epoch).open(
        row.wrapped, dek_aad(ring.vault_id, customer_id, row.version, row.epoch)
    )


@pytest.fixture
def keyfile_key(tmp_path: Path) -> SecretBytes:
    path = tmp_path / "vault.key"
    generate_keyfile(path)
    return load_keyfile(path)


@pytest.fixture
def keys_db(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def ring(keys_db: Path, keyfile_key: SecretBytes) -> Iterator[KeyRing]:
    ring = KeyRing.create(keys_db, VAULT, created=CREATED, keyfile_key=keyfile_key)
    yield ring
    ring.close()


@pytest.fixture(scope="module")
def passphrase_keystore_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed passphrase keystore at the floor, made once (one ~0.2 s derivation)."""
    path = tmp_path_factory.mktemp("template") / "keys.db"
    ring = KeyRing.create(path, VAULT, created=CREATED, passphrase=PASSPHRASE, params=FLOOR)
    ring.create_customers([customer(1)], CREATED)
    ring.close()
    return path


@pytest.fixture
def passphrase_keys_db(passphrase_keystore_template: Path, keys_db: Path) -> Path:
    shutil.copy2(passphrase_keystore_template, keys_db)
    return keys_db


def reopen_with_keyfile(path: Path, key: SecretBytes) -> KeyRing:
    return KeyRing.unlock(KeyStore.open(path), keyfile_key=key)


# -- passphrase unlock ---------------------------------------------------------------


def test_passphrase_keystore_unlocks_with_its_passphrase_and_serves_its_keys(
    keys_db: Path,
) -> None:
    ring = KeyRing.create(keys_db, VAULT, created=CREATED, passphrase=PASSPHRASE, params=FLOOR)
    ring.create_customers([customer(1)], CREATED)
    context = record_aad(VAULT, customer(1), "rec_1", "contact", 1)
    blob = ring.customer_keys([customer(1)])[customer(1)].current.seal(b"ada", context)
    ring.close()

    reopened = KeyRing.unlock(KeyStore.open(keys_db), passphrase=PASSPHRASE)
    try:
        assert reopened.customer_keys([customer(1)])[customer(1)].current.open(blob, context) == (
            b"ada"
        )
    finally:
        reopened.close()


def test_passphrase_keystore_header_stores_salt_and_kdf_parameters(
    passphrase_keys_db: Path,
) -> None:
    store = KeyStore.open(passphrase_keys_db)
    try:
        header = store.header()
    finally:
        store.close()
    assert header.key_source == "passphrase"
    assert KdfParams.from_dict(json.loads(header.kdf)) == FLOOR
    assert len(header.salt) == 16
    assert len(header.key_check) == 32


def test_wrong_passphrase_raises_wrong_key_error_and_leaves_the_keystore_unchanged(
    passphrase_keys_db: Path,
) -> None:
    before = sha256_of(passphrase_keys_db)
    store = KeyStore.open(passphrase_keys_db)
    try:
        with pytest.raises(WrongKeyError):
            KeyRing.unlock(store, passphrase=b"wrong horse battery staple")
    finally:
        store.close()
    assert sha256_of(passphrase_keys_db) == before


@pytest.mark.parametrize(
    "weakened",
    [
        pytest.param({"t": 1, "m": 65536, "p": 1}, id="t=1"),
        pytest.param({"t": 3, "m": 8, "p": 1}, id="m=8KiB"),
        pytest.param({"t": 3, "m": 65536, "p": 0}, id="p=0"),
        pytest.param({"t": 1, "m": 8, "p": 1}, id="all-weak"),
    ],
)
def test_unlock_refuses_a_header_whose_kdf_parameters_were_lowered_below_the_floor(
    passphrase_keys_db: Path, weakened: dict[str, int]
) -> None:
    edit_keystore(passphrase_keys_db, "UPDATE meta SET v = ? WHERE k = 'kdf'", json.dumps(weakened))
    store = KeyStore.open(passphrase_keys_db)
    try:
        with pytest.raises(WeakParametersError):
            KeyRing.unlock(store, passphrase=PASSPHRASE)
    finally:
        store.close()


@pytest.mark.parametrize("damaged", ["not json", '{"t": 3}'], ids=["not-json", "missing-m-and-p"])
def test_unlock_reports_a_damaged_kdf_header_as_a_keystore_error(
    passphrase_keys_db: Path, damaged: str
) -> None:
    edit_keystore(passphrase_keys_db, "UPDATE meta SET v = ? WHERE k = 'kdf'", damaged)
    store = KeyStore.open(passphrase_keys_db)
    try:
        with pytest.raises(KeystoreError):
            KeyRing.unlock(store, passphrase=PASSPHRASE)
    finally:
        store.close()


def test_passphrase_keystore_refuses_to_unlock_with_a_keyfile(
    passphrase_keys_db: Path, keyfile_key: SecretBytes
) -> None:
    store = KeyStore.open(passphrase_keys_db)
    try:
        with pytest.raises(InvalidKeyError, match="passphrase"):
            KeyRing.unlock(store, keyfile_key=keyfile_key)
    finally:
        store.close()


def test_create_refuses_an_empty_passphrase_and_leaves_no_file(keys_db: Path) -> None:
    with pytest.raises(InvalidKeyError):
        KeyRing.create(keys_db, VAULT, created=CREATED, passphrase=b"", params=FLOOR)
    assert not keys_db.exists()


def test_create_refuses_kdf_parameters_below_the_floor_and_leaves_no_file(keys_db: Path) -> None:
    with pytest.raises(WeakParametersError):
        KeyRing.create(
            keys_db, VAULT, created=CREATED, passphrase=PASSPHRASE, params=KdfParams(1, 1024, 1)
        )
    assert not keys_db.exists()


# -- keyfile unlock ------------------------------------------------------------------


def test_keyfile_keystore_unlocks_with_its_keyfile_and_serves_its_keys(
    tmp_path: Path, keys_db: Path
) -> None:
    generate_keyfile(tmp_path / "vault.key")
    ring = KeyRing.create(
        keys_db, VAULT, created=CREATED, keyfile_key=load_keyfile(tmp_path / "vault.key")
    )
    ring.create_customers([customer(1)], CREATED)
    context = record_aad(VAULT, customer(1), "rec_1", "contact", 1)
    blob = ring.customer_keys([customer(1)])[customer(1)].current.seal(b"ada", context)
    ring.close()

    reopened = reopen_with_keyfile(keys_db, load_keyfile(tmp_path / "vault.key"))
    try:
        keys = reopened.customer_keys([customer(1)])[customer(1)]
        assert keys.current.open(blob, context) == b"ada"
    finally:
        reopened.close()


def test_another_keyfile_raises_wrong_key_error_and_leaves_the_keystore_unchanged(
    tmp_path: Path, ring: KeyRing, keys_db: Path
) -> None:
    ring.close()
    before = sha256_of(keys_db)
    generate_keyfile(tmp_path / "other.key")
    store = KeyStore.open(keys_db)
    try:
        with pytest.raises(WrongKeyError):
            KeyRing.unlock(store, keyfile_key=load_keyfile(tmp_path / "other.key"))
    finally:
        store.close()
    assert sha256_of(keys_db) == before


def test_keyfile_keystore_refuses_to_unlock_with_a_passphrase(ring: KeyRing, keys_db: Path) -> None:
    ring.close()
    store = KeyStore.open(keys_db)
    try:
        with pytest.raises(InvalidKeyError, match="keyfile"):
            KeyRing.unlock(store, passphrase=PASSPHRASE)
    finally:
        store.close()


@pytest.mark.parametrize("both", [True, False], ids=["both", "neither"])
def test_create_needs_exactly_one_of_passphrase_or_keyfile(
    keys_db: Path, keyfile_key: SecretBytes, both: bool
) -> None:
    with pytest.raises(InvalidKeyError):
        KeyRing.create(
            keys_db,
            VAULT,
            created=CREATED,
            passphrase=PASSPHRASE if both else None,
            keyfile_key=keyfile_key if both else None,
        )
    assert not keys_db.exists()


# -- the file and its pragmas --------------------------------------------------------


def test_keystore_connection_has_secure_delete_on(ring: KeyRing) -> None:
    with ring.store.transaction() as conn:
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_reopened_keystore_connection_has_secure_delete_on(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    ring.close()
    store = KeyStore.open(keys_db)
    try:
        with store.transaction() as conn:
            assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    finally:
        store.close()


def test_keystore_journal_mode_is_wal(ring: KeyRing) -> None:
    with ring.store.transaction() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_keystore_file_itself_is_in_wal_mode(ring: KeyRing, keys_db: Path) -> None:
    ring.close()
    with closing(sqlite3.connect(keys_db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_keystore_connection_syncs_fully(ring: KeyRing) -> None:
    with ring.store.transaction() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_keystore_files_are_readable_only_by_the_owner(ring: KeyRing, keys_db: Path) -> None:
    ring.create_customers([customer(1)], CREATED)
    files = [Path(str(keys_db) + suffix) for suffix in ("", "-wal", "-shm")]
    assert all(f.exists() for f in files)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


def test_keystore_create_refuses_an_existing_path_and_leaves_it_untouched(keys_db: Path) -> None:
    keys_db.write_bytes(b"someone else's file")
    header = KeystoreHeader(VAULT, SCHEMA_VERSION, "keyfile", "", b"", bytes(32), 1, CREATED)
    with pytest.raises(KeystoreError, match="exists"):
        KeyStore.create(keys_db, header)
    assert keys_db.read_bytes() == b"someone else's file"


def test_key_ring_create_refuses_an_existing_keystore_and_leaves_it_untouched(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    ring.create_customers([customer(1)], CREATED)
    ring.close()
    before = sha256_of(keys_db)
    with pytest.raises(KeystoreError, match="exists"):
        KeyRing.create(keys_db, VAULT, created=CREATED, keyfile_key=keyfile_key)
    assert sha256_of(keys_db) == before
    reopened = reopen_with_keyfile(keys_db, keyfile_key)
    try:
        assert customer(1) in reopened.customer_keys([customer(1)])
    finally:
        reopened.close()


def test_keystore_open_refuses_a_missing_file_without_creating_it(keys_db: Path) -> None:
    with pytest.raises(KeystoreError, match="not found"):
        KeyStore.open(keys_db)
    assert not keys_db.exists()


def test_keystore_open_refuses_a_newer_schema_version(ring: KeyRing, keys_db: Path) -> None:
    ring.close()
    edit_keystore(
        keys_db, "UPDATE meta SET v = ? WHERE k = 'schema_version'", str(SCHEMA_VERSION + 1)
    )
    with pytest.raises(KeystoreError, match="newer"):
        KeyStore.open(keys_db)


def test_keystore_open_refuses_a_file_that_is_not_a_database(keys_db: Path) -> None:
    keys_db.write_bytes(os.urandom(4096))
    with pytest.raises(KeystoreError, match="not a shredvault keystore"):
        KeyStore.open(keys_db)


def test_keystore_open_refuses_an_empty_file_without_writing_to_it(keys_db: Path) -> None:
    keys_db.write_bytes(b"")
    with pytest.raises(KeystoreError):
        KeyStore.open(keys_db)
    assert keys_db.read_bytes() == b""
    assert not Path(str(keys_db) + "-wal").exists()


# -- customers' keys -----------------------------------------------------------------


def test_create_customers_returns_a_distinct_16_byte_subject_tag_per_customer(
    ring: KeyRing,
) -> None:
    tags = ring.create_customers([customer(i) for i in range(100)], CREATED)
    assert sorted(tags) == [customer(i) for i in range(100)]
    assert all(len(tag) == 16 for tag in tags.values())
    assert len(set(tags.values())) == 100


def test_customer_keys_after_reopen_match_those_made_at_creation(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    ids = [customer(i) for i in range(3)]
    tags = ring.create_customers(ids, CREATED)
    contexts = {c: record_aad(VAULT, c, "rec_1", "contact", 1) for c in ids}
    made = ring.customer_keys(ids)
    blobs = {c: made[c].current.seal(c.encode(), contexts[c]) for c in ids}
    ring.close()

    reopened = reopen_with_keyfile(keys_db, keyfile_key)
    try:
        loaded = reopened.customer_keys(ids)
        assert {c: loaded[c].subject_tag for c in ids} == tags
        assert all(loaded[c].current.open(blobs[c], contexts[c]) == c.encode() for c in ids)
        assert all(sorted(loaded[c].versions) == [1] for c in ids)
    finally:
        reopened.close()


def test_each_customer_has_its_own_dek(ring: KeyRing) -> None:
    ring.create_customers([customer(1), customer(2)], CREATED)
    keys = ring.customer_keys([customer(1), customer(2)])
    context = record_aad(VAULT, customer(1), "rec_1", "contact", 1)
    blob = keys[customer(1)].current.seal(b"ada", context)
    with pytest.raises(DecryptionError):
        keys[customer(2)].current.open(blob, context)


def test_wrapped_dek_unwraps_under_the_active_kek_which_unwraps_under_the_root_wrap_subkey(
    ring: KeyRing, keyfile_key: SecretBytes
) -> None:
    ring.create_customers([customer(1)], CREATED)
    (row,) = ring.store.deks([customer(1)])
    assert (row.version, row.epoch) == (1, ring.active_epoch)
    assert blob_key_version(row.wrapped) == row.epoch
    raw = unwrap_dek_by_hand(ring, keyfile_key, customer(1))
    context = record_aad(VAULT, customer(1), "rec_1", "contact", 1)
    blob = ring.customer_keys([customer(1)])[customer(1)].current.seal(b"ada", context)
    assert Envelope(SecretBytes(raw), 1).open(blob, context) == b"ada"


def test_customer_keys_omits_customers_that_have_no_keys(ring: KeyRing) -> None:
    ring.create_customers([customer(1)], CREATED)
    assert list(ring.customer_keys([customer(1), customer(2)])) == [customer(1)]


def test_customer_keys_serves_repeat_requests_from_the_cache(ring: KeyRing) -> None:
    ring.create_customers([customer(1)], CREATED)
    first = ring.customer_keys([customer(1)])[customer(1)]
    # Remove the rows behind the ring's back: only the cache can still answer.
    with ring.store.transaction() as conn:
        ring.store.delete_customer(conn, customer(1))
    assert ring.customer_keys([customer(1)])[customer(1)] is first


def test_forget_drops_cached_keys_so_the_next_request_reads_the_keystore(ring: KeyRing) -> None:
    ring.create_customers([customer(1), customer(2)], CREATED)
    with ring.store.transaction() as conn:
        ring.store.delete_customer(conn, customer(1))
    ring.forget([customer(1)])
    assert customer(1) not in ring.customer_keys([customer(1)])
    assert customer(2) in ring.customer_keys([customer(2)])


def test_forget_then_reload_gives_keys_that_open_earlier_ciphertexts(ring: KeyRing) -> None:
    ring.create_customers([customer(1)], CREATED)
    cached = ring.customer_keys([customer(1)])[customer(1)]
    context = record_aad(VAULT, customer(1), "rec_1", "contact", 1)
    blob = cached.current.seal(b"ada", context)
    ring.forget([customer(1)])
    reloaded = ring.customer_keys([customer(1)])[customer(1)]
    assert reloaded is not cached
    assert reloaded.current.open(blob, context) == b"ada"
    assert reloaded.subject_tag == cached.subject_tag


def test_a_wrapped_dek_moved_to_another_customer_fails_to_unwrap(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    ring.create_customers([customer(1), customer(2)], CREATED)
    ring.close()
    edit_keystore(
        keys_db,
        "UPDATE deks SET wrapped = (SELECT wrapped FROM deks WHERE customer_id = ?) "
        "WHERE customer_id = ?",
        customer(2),
        customer(1),
    )
    reopened = reopen_with_keyfile(keys_db, keyfile_key)
    try:
        with pytest.raises(KeystoreError, match="failed to unwrap"):
            reopened.customer_keys([customer(1)])
    finally:
        reopened.close()


# -- destroying a customer's keys ----------------------------------------------------


def test_destroy_customer_returns_sha256_fingerprints_of_the_wrapped_deks(ring: KeyRing) -> None:
    ring.create_customers([customer(1)], CREATED)
    (row,) = ring.store.deks([customer(1)])
    expected = hashlib.sha256(row.wrapped).hexdigest()
    assert fingerprint(row.wrapped) == expected
    assert ring.destroy_customer(customer(1)) == [expected]


def test_destroy_customer_is_idempotent(ring: KeyRing) -> None:
    ring.create_customers([customer(1)], CREATED)
    assert len(ring.destroy_customer(customer(1))) == 1
    assert ring.destroy_customer(customer(1)) == []


def test_destroy_customer_of_an_unknown_customer_returns_nothing(ring: KeyRing) -> None:
    assert ring.destroy_customer(customer(404)) == []


def test_destroy_customer_drops_cached_keys_and_spares_other_customers(ring: KeyRing) -> None:
    ring.create_customers([customer(1), customer(2)], CREATED)
    ring.customer_keys([customer(1), customer(2)])
    ring.destroy_customer(customer(1))
    assert list(ring.customer_keys([customer(1), customer(2)])) == [customer(2)]
    assert ring.store.subject_tags([customer(1), customer(2)]).keys() == {customer(2)}
    assert ring.store.count_deks() == 1


def test_destroyed_keys_stay_gone_after_reopen(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    ring.create_customers([customer(1), customer(2)], CREATED)
    ring.destroy_customer(customer(1))
    ring.close()
    reopened = reopen_with_keyfile(keys_db, keyfile_key)
    try:
        assert list(reopened.customer_keys([customer(1), customer(2)])) == [customer(2)]
    finally:
        reopened.close()


def destroy_and_search_residue(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes, count: int
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, bytes]], list[str]]:
    """Make ``count`` customers, destroy every 100th, and search keys.db, -wal and -shm
    for their wrapped DEKs, raw DEKs and subject tags. Returns (residue found, evidence of
    survivors, survivors)."""
    ids = [customer(i) for i in range(count)]
    for start in range(0, len(ids), 500):
        ring.create_customers(ids[start : start + 500], CREATED)
    ring.customer_keys(ids)
    victims, survivors = ids[::100], ids[1::100]
    evidence = {}
    for cid in victims + survivors:
        (row,) = ring.store.deks([cid])
        evidence[cid] = {
            "wrapped DEK": row.wrapped,
            "raw DEK": unwrap_dek_by_hand(ring, keyfile_key, cid),
            "subject tag": ring.store.subject_tags([cid])[cid],
        }
    for cid in victims:
        assert len(ring.destroy_customer(cid)) == 1
    assert ring.store.count_deks() == len(ids) - len(victims)

    files = keystore_files(keys_db)
    assert set(files) == {"keys.db", "keys.db-wal", "keys.db-shm"}
    residue = [
        (cid, what, name)
        for cid in victims
        for what, value in evidence[cid].items()
        for name, content in files.items()
        if value in content
    ]
    return residue, {c: evidence[c] for c in survivors}, survivors


def test_destroyed_keys_leave_no_bytes_in_keys_db_or_its_wal_and_shm_among_2000_customers(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    residue, _survivors_evidence, _survivors = destroy_and_search_residue(
        ring, keys_db, keyfile_key, count=2000
    )
    assert residue == []


def test_key_cells_never_move_so_shreds_among_inserts_leave_no_stale_copy(
    ring: KeyRing, keys_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Erasure in place: rows are only appended and destroyed rows are overwritten in
    their own cells, and no index holds a subject tag, so a live customer's wrapped DEK
    and tag sit in the file exactly once and a destroyed one's nowhere, however the
    keystore grows between shreds, with no rebuild (compare the control below)."""
    monkeypatch.setattr("shredvault.keys.erasure.scrub_every", lambda keys: 10**9)
    ids: list[str] = []
    destroyed: dict[str, tuple[bytes, bytes]] = {}
    for batch in range(30):
        new = [customer(i) for i in range(batch * 100, (batch + 1) * 100)]
        ring.create_customers(new, CREATED)
        ids += new
        for cid in ids[batch::37][:3]:
            if cid not in destroyed:
                tag = ring.store.subject_tags([cid])[cid]
                (row,) = ring.store.deks([cid])
                destroyed[cid] = (tag, row.wrapped)
                ring.destroy_customer(cid)
    assert ring.store.scrub_state().epoch == 1  # no rebuild ran
    ring.store.checkpoint_truncate()
    files = keystore_files(keys_db)
    data = b"".join(files.values())
    residue = [c for c, values in destroyed.items() if any(v in data for v in values)]
    assert residue == []
    live = [c for c in ids if c not in destroyed]
    tags = ring.store.subject_tags(live)
    wrapped = {r.customer_id: r.wrapped for r in ring.store.deks(live)}
    copies = [c for c in live if data.count(tags[c]) != 1 or data.count(wrapped[c]) != 1]
    assert copies == []
    assert len(ring.customer_keys(live)) == len(live)


def test_control_a_unique_index_on_tags_leaves_stale_copies_as_it_grows(tmp_path: Path) -> None:
    """Why no index holds a tag: the old layout's UNIQUE index moves tags between pages
    as random tags are inserted, and the pages they leave keep their bytes."""
    path = tmp_path / "old-layout.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("CREATE TABLE subject_tags (customer_id TEXT PRIMARY KEY, tag BLOB UNIQUE)")
    tags = {customer(i): os.urandom(16) for i in range(3000)}
    items = list(tags.items())
    for start in range(0, len(items), 100):
        conn.executemany("INSERT INTO subject_tags VALUES (?, ?)", items[start : start + 100])
    conn.close()
    data = path.read_bytes()
    # Live: a tag is in its row and in the index.
    assert [c for c, t in tags.items() if data.count(t) > 2] != []


def test_a_bulk_deletion_scrubs_once_at_its_end_and_leaves_no_stale_copy(
    ring: KeyRing, keys_db: Path
) -> None:
    ids = [customer(i) for i in range(1500)]
    for start in range(0, len(ids), 100):
        ring.create_customers(ids[start : start + 100], CREATED)
    ring.store.checkpoint_truncate()
    data = keys_db.read_bytes()
    tags = ring.store.subject_tags(ids)
    wrapped = {r.customer_id: r.wrapped for r in ring.store.deks(ids)}
    victims = [c for c in ids if data.count(tags[c]) > 2 or data.count(wrapped[c]) > 1]
    victims += ids[::50]  # and some without stale copies
    with ring.scrub_once() as outcome:
        assert ring.store.get_meta("scrub_due") == "1"
        for cid in victims:
            ring.destroy_customer(cid)
    assert outcome.done and ring.store.get_meta("scrub_due") is None
    files = keystore_files(keys_db)
    residue = [
        cid
        for cid in victims
        for content in files.values()
        if tags[cid] in content or wrapped[cid] in content
    ]
    assert residue == []


def test_a_scrub_owed_after_a_crash_is_done_by_the_next_unlock(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    ring.create_customers([customer(1), customer(2)], CREATED)
    with ring.store.transaction() as conn:  # as scrub_once leaves it when killed inside
        ring.store.set_meta(conn, "scrub_due", "1")
    ring.close()
    reopened = KeyRing.unlock(KeyStore.open(keys_db), keyfile_key=keyfile_key)
    try:
        assert reopened.finish_pending_scrub()
        assert reopened.store.get_meta("scrub_due") is None
        assert set(reopened.customer_keys([customer(1), customer(2)])) == {
            customer(1),
            customer(2),
        }
    finally:
        reopened.close()


def test_the_residue_search_sees_survivors_stored_bytes(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    _residue, evidence, survivors = destroy_and_search_residue(
        ring, keys_db, keyfile_key, count=2000
    )
    stored = b"".join(keystore_files(keys_db).values())
    for cid in survivors:
        assert evidence[cid]["wrapped DEK"] in stored
        assert evidence[cid]["subject tag"] in stored


def test_the_residue_search_finds_destroyed_keys_when_secure_delete_is_off_and_rows_deleted(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Control: a plain DELETE (not the overwrite in place) without secure_delete leaves
    # deleted cells in the file, and the search above must notice. (This machine's
    # SQLite may default secure_delete on; the library sets it explicitly so builds
    # without that default are covered too.)
    def plain_delete(self: KeyStore, conn: sqlite3.Connection, cid: str) -> list[DekRow]:
        rows = self.deks([cid])
        conn.execute("DELETE FROM deks WHERE customer_id = ?", (cid,))
        conn.execute("DELETE FROM subject_tags WHERE customer_id = ?", (cid,))
        return rows

    monkeypatch.setattr(KeyStore, "delete_customer", plain_delete)
    with ring.store.transaction() as conn:
        conn.execute("PRAGMA secure_delete = OFF")
    residue, _evidence, _survivors = destroy_and_search_residue(
        ring, keys_db, keyfile_key, count=200
    )
    assert {what for _cid, what, _name in residue} >= {"wrapped DEK", "subject tag"}
    assert {cid for cid, _what, _name in residue} == {customer(i) for i in range(0, 200, 100)}


def test_the_overwrite_in_place_alone_erases_key_cells_when_secure_delete_is_off(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    with ring.store.transaction() as conn:
        conn.execute("PRAGMA secure_delete = OFF")
    residue, _evidence, _survivors = destroy_and_search_residue(
        ring, keys_db, keyfile_key, count=200
    )
    assert residue == []


def test_destroy_customer_raises_rather_than_claim_erasure_while_a_reader_pins_the_wal(
    ring: KeyRing, keys_db: Path
) -> None:
    ring.create_customers([customer(1), customer(2)], CREATED)
    (row,) = ring.store.deks([customer(1)])
    with ring.store.transaction() as conn:
        conn.execute("PRAGMA busy_timeout = 5")  # keep the library's retries short
    reader = sqlite3.connect(keys_db, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM deks").fetchone()
        with pytest.raises(KeystoreError, match="WAL"):
            ring.destroy_customer(customer(1))
    finally:
        reader.close()
    # Once the reader has gone, a retry finishes the erasure.
    assert ring.destroy_customer(customer(1)) == []
    assert all(row.wrapped not in content for content in keystore_files(keys_db).values())


# -- rollback anchor -----------------------------------------------------------------


def test_keystore_has_no_anchor_until_one_is_advanced(ring: KeyRing) -> None:
    assert ring.store.anchor() is None


def test_advance_anchor_moves_forward(ring: KeyRing) -> None:
    ring.store.advance_anchor(5, b"body-5", b"sig-5")
    ring.store.advance_anchor(8, b"body-8", b"sig-8")
    assert ring.store.anchor() == (8, b"body-8", b"sig-8")


def test_advance_anchor_never_moves_backwards(ring: KeyRing) -> None:
    ring.store.advance_anchor(8, b"body-8", b"sig-8")
    ring.store.advance_anchor(5, b"body-5", b"sig-5")
    assert ring.store.anchor() == (8, b"body-8", b"sig-8")


def test_advance_anchor_keeps_the_first_checkpoint_at_a_given_seq(ring: KeyRing) -> None:
    ring.store.advance_anchor(8, b"body-8", b"sig-8")
    ring.store.advance_anchor(8, b"forked-8", b"forged-sig")
    assert ring.store.anchor() == (8, b"body-8", b"sig-8")


def test_anchor_survives_reopening_the_keystore(ring: KeyRing, keys_db: Path) -> None:
    ring.store.advance_anchor(8, b"body-8", b"sig-8")
    ring.close()
    store = KeyStore.open(keys_db)
    try:
        assert store.anchor() == (8, b"body-8", b"sig-8")
    finally:
        store.close()


# -- signing -------------------------------------------------------------------------

# RFC 8032 §7.1, TEST 1 (empty message).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_signer_matches_the_rfc_8032_ed25519_test_vector() -> None:
    signer = Signer(SecretBytes(RFC8032_SEED))
    assert signer.public_key == RFC8032_PUBLIC
    assert signer.sign(b"") == RFC8032_SIGNATURE


def test_a_signature_verifies_under_the_signers_public_key() -> None:
    signer = Signer(SecretBytes(os.urandom(32)))
    message = b'{"seq":1,"type":"checkpoint"}'
    assert verify_signature(signer.public_key, message, signer.sign(message)) is True


def test_a_signature_does_not_verify_for_an_altered_message() -> None:
    signer = Signer(SecretBytes(os.urandom(32)))
    signature = signer.sign(b'{"seq":1,"type":"checkpoint"}')
    assert verify_signature(signer.public_key, b'{"seq":2,"type":"checkpoint"}', signature) is False


def test_a_signature_does_not_verify_under_another_public_key() -> None:
    signer, other = Signer(SecretBytes(os.urandom(32))), Signer(SecretBytes(os.urandom(32)))
    signature = signer.sign(b"checkpoint")
    assert verify_signature(other.public_key, b"checkpoint", signature) is False


def test_an_altered_signature_does_not_verify() -> None:
    signer = Signer(SecretBytes(os.urandom(32)))
    signature = bytearray(signer.sign(b"checkpoint"))
    signature[10] ^= 0x01
    assert verify_signature(signer.public_key, b"checkpoint", bytes(signature)) is False


@pytest.mark.parametrize(
    ("public_size", "signature_size"), [(31, 64), (33, 64), (32, 63), (32, 65), (0, 0)]
)
def test_verify_signature_returns_false_for_wrong_sized_inputs(
    public_size: int, signature_size: int
) -> None:
    signer = Signer(SecretBytes(os.urandom(32)))
    signature = signer.sign(b"checkpoint")
    public = (signer.public_key * 2)[:public_size]
    resized = (signature * 2)[:signature_size]
    assert verify_signature(public, b"checkpoint", resized) is False


def test_signer_refuses_a_seed_that_is_not_32_bytes() -> None:
    with pytest.raises(InvalidKeyError):
        Signer(SecretBytes(bytes(31)))


def test_key_ring_signer_survives_reopen_and_matches_the_stored_public_key(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    signature = ring.signer.sign(b"checkpoint")
    public = ring.public_key
    ring.close()
    store = KeyStore.open(keys_db)
    assert store.public_key() == public  # readable without unlocking
    reopened = KeyRing.unlock(store, keyfile_key=keyfile_key)
    try:
        assert reopened.public_key == public
        assert verify_signature(public, b"checkpoint", signature) is True
        assert reopened.signer.sign(b"checkpoint") == signature  # Ed25519 is deterministic
    finally:
        reopened.close()


def test_unlock_refuses_a_keystore_whose_public_key_was_replaced(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    ring.close()
    impostor = Signer(SecretBytes(os.urandom(32))).public_key
    edit_keystore(keys_db, "UPDATE signing SET public_key = ?", impostor)
    store = KeyStore.open(keys_db)
    try:
        with pytest.raises(KeystoreError, match="public key"):
            KeyRing.unlock(store, keyfile_key=keyfile_key)
    finally:
        store.close()


def test_a_keystore_from_before_erasure_in_place_is_converted_at_open(
    ring: KeyRing, keys_db: Path, keyfile_key: SecretBytes
) -> None:
    tags = ring.create_customers([customer(i) for i in range(300)], CREATED)
    ring.close()
    with closing(sqlite3.connect(keys_db, isolation_level=None)) as conn:  # the old layout
        conn.executescript(
            "BEGIN; CREATE TABLE old_tags (customer_id TEXT PRIMARY KEY, tag BLOB NOT NULL UNIQUE);"
            "INSERT INTO old_tags SELECT customer_id, tag FROM subject_tags;"
            "DROP TABLE subject_tags; ALTER TABLE old_tags RENAME TO subject_tags;"
            "DELETE FROM meta WHERE k IN ('layout', 'scrub_epoch'); COMMIT;"
        )
    reopened = reopen_with_keyfile(keys_db, keyfile_key)
    try:
        assert reopened.store.get_meta("layout") == "in-place-v1"
        assert reopened.store.scrub_state().epoch == 2  # converted, then scrubbed once
        assert reopened.store.subject_tags(list(tags)) == tags
        indexes = reopened.store._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'subject_tags'"
        ).fetchall()
        assert indexes == [("sqlite_autoindex_subject_tags_1",)]  # the customer id only
        assert reopened.store.customers_for_tags([tags[customer(7)]]) == {
            tags[customer(7)]: customer(7)
        }
    finally:
        reopened.close()


def test_destroyed_rows_are_invisible_until_the_scrub_removes_them(
    ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shredvault.keys.erasure.scrub_every", lambda keys: 10**9)
    ring.create_customers([customer(1), customer(2)], CREATED)
    ring.destroy_customer(customer(1))
    store = ring.store
    assert store.count_deks() == 1 and store.scrub_state().pending == 1
    assert store.dek_counts() == {1: 1}
    assert store.deks_created_before("9999") == [customer(2)]
    assert store.deks_outside_epoch(2, 10) == [store.deks([customer(2)])[0]]
    raw = store._conn.execute("SELECT customer_id, wrapped, created FROM deks").fetchall()
    destroyed = [r for r in raw if r[0] != customer(2)]
    assert len(destroyed) == 1 and destroyed[0][0].startswith("~")
    assert len(destroyed[0][0]) == len(customer(1)) and set(destroyed[0][1]) == {0}
    ring.finish_pending_scrub()
    assert store._conn.execute("SELECT COUNT(*) FROM deks").fetchone() == (1,)
    assert store.scrub_state().pending == 0 and store.scrub_state().epoch == 2


def test_a_scrub_epoch_closes_after_one_shred_per_400_keys_held(ring: KeyRing) -> None:
    assert [scrub_every(n) for n in (0, 100, 800, 1_200, 100_000, 10**7)] == [
        1,
        1,
        2,
        3,
        250,
        1024,
    ]
    ring.create_customers([customer(i) for i in range(1_200)], CREATED)
    for i in range(3):
        assert ring.store.scrub_state().epoch == 1
        ring.destroy_customer(customer(i))
    assert ring.store.scrub_state().epoch == 2 and ring.store.scrub_state().pending == 0
