"""The unlocked key hierarchy (DESIGN §3): root -> KEK epochs -> per-customer DEKs.

A :class:`KeyRing` owns an open :class:`~keys.store.KeyStore` and the root key; it
unwraps KEK epochs and the signing seed at unlock and DEKs on demand, caching one
:class:`~keys.envelope.Envelope` per customer and version (:meth:`KeyRing.forget` drops
them). Beside it: the root key's subkeys and what they wrap in :mod:`keys.epochs`,
destroying every key at decommission in :mod:`keys.decommission`. Callers never hold a
raw subkey (:meth:`KeyRing.token_mac`, :meth:`KeyRing.token_matches`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .blindindex import IndexKey
from .decommission import destroy_all_keys, destroy_signing_seed
from .envelope import (
    Envelope,
    blob_key_version,
    dek_aad,
    fingerprint,
    kek_aad,
    mac_seed_aad,
    record_aad_prefix,
    signing_seed_aad,
)
from .epochs import KekEpochs, KeystoreUpgrade
from .erasure import SCRUB_DUE
from .errors import DecryptionError, KeystoreError
from .faults import crash_point
from .kdf import KdfParams
from .root import RootKeys, key_check_for, new_root, unlock_root
from .rowauth import RowAuth
from .secret import SecretBytes
from .signing import Signer
from .store import SCHEMA_VERSION, DekRow, KeyStore, KeystoreHeader
from .subkeys import SUBKEY_SIZE

__all__ = ["SUBJECT_TAG_SIZE", "CustomerKeys", "KeyRing", "KeystoreUpgrade"]

SUBJECT_TAG_SIZE = 16


@dataclass(slots=True)
class ScrubOutcome:
    """Set when :meth:`KeyRing.scrub_once` ends: whether its scrub was done."""

    done: bool = False


@dataclass(slots=True)
class CustomerKeys:
    """A customer's unwrapped DEK versions and subject tag, as cached by the key ring."""

    customer_id: str
    current: Envelope
    versions: dict[int, Envelope]
    subject_tag: bytes
    record_prefix: bytes  # record_aad_prefix(vault, customer), cached for hot paths

    def __repr__(self) -> str:
        return f"<CustomerKeys {self.customer_id} versions={sorted(self.versions)}, redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("customer keys cannot be pickled")


class KeyRing:
    """An unlocked keystore, one per open vault, safe to share between threads: the
    keystore gives each thread its own connection, the key cache takes whole entries
    only, and a deferred scrub (:meth:`scrub_once`) belongs to the thread that asked."""

    def __init__(self, store: KeyStore, root: SecretBytes, header: KeystoreHeader) -> None:
        self.store = store
        self.vault_id = header.vault_id
        self.epochs = KekEpochs(store, root, header)
        self._customers: dict[str, CustomerKeys] = {}
        self._scrubbing = threading.local()  # .deferring: inside this thread's scrub_once
        generation, wrapped_seed, public = store.signing_seed()
        seed = self.epochs.unwrap_signing_seed(generation, wrapped_seed)
        self.signer = Signer(seed)
        seed.wipe()
        if self.signer.public_key != public:
            raise KeystoreError("the keystore's public key does not match its signing seed")
        self.public_key = public

    def __repr__(self) -> str:
        return f"<KeyRing vault={self.vault_id} epochs={self.epochs.unwrapped()}, keys redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("key rings cannot be pickled")

    # -- creation and unlocking --------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        vault_id: str,
        *,
        created: str,
        passphrase: bytes | None = None,
        keyfile_key: SecretBytes | None = None,
        params: KdfParams | None = None,
    ) -> KeyRing:
        """Create ``keys.db`` (the current schema: subkeys of the root key) with a first
        KEK epoch, a signing seed and a MAC seed, and unlock it."""
        new = new_root(passphrase, keyfile_key, params)
        root = new.root
        header = KeystoreHeader(
            vault_id=vault_id,
            schema_version=SCHEMA_VERSION,
            key_source=new.key_source,
            kdf=new.kdf,
            salt=new.salt,
            key_check=key_check_for(root, vault_id, SCHEMA_VERSION),
            active_epoch=1,
            created=created,
        )
        store = KeyStore.create(path, header)
        try:
            wrap = RootKeys(root, vault_id, SCHEMA_VERSION).wrap
            seed = SecretBytes(os.urandom(32))
            public = Signer(seed).public_key
            with store.transaction() as conn:
                store.add_epoch(conn, 1, wrap.seal(os.urandom(32), kek_aad(vault_id, 1)), created)
                store.add_signing_seed(
                    conn,
                    1,
                    wrap.seal(seed.reveal(), signing_seed_aad(vault_id, 1)),
                    public,
                    created,
                )
                mac_seed = wrap.seal(os.urandom(SUBKEY_SIZE), mac_seed_aad(vault_id))
                store.add_mac_seed(conn, mac_seed, created)
            seed.wipe()
            return cls(store, root, header)
        except BaseException:
            store.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            raise

    @classmethod
    def unlock(
        cls,
        store: KeyStore,
        *,
        passphrase: bytes | None = None,
        keyfile_key: SecretBytes | None = None,
    ) -> KeyRing:
        """Derive the root key, check it against the key-check value, unwrap the epochs.

        Raises :class:`~keys.errors.WrongKeyError` for a wrong passphrase or keyfile and
        :class:`~keys.errors.WeakParametersError` for a header below the KDF floor.
        """
        header = store.header()
        return cls(store, unlock_root(header, passphrase, keyfile_key), header)

    @property
    def kdf_params(self) -> KdfParams | None:
        """The header's KDF parameters; None for a keyfile vault."""
        return self.epochs.kdf_params

    @property
    def key_source(self) -> str:
        return self.epochs.key_source

    @property
    def active_epoch(self) -> int:
        return self.epochs.active_epoch

    def _kek(self, epoch: int) -> Envelope:
        return self.epochs.kek(epoch)

    # -- principals' token verifiers (keys/tokenmac.py) --------------------------------

    def token_mac(self, token: str) -> str:
        """The verifier (hex) to store for a new principal's ``token``:
        HMAC-SHA-256(token-MAC subkey, SHA-256(token)). The key never leaves the ring."""
        return self.epochs.tokens.of_token(token)

    def token_matches(self, token: str, stored: str) -> bool:
        """Whether ``token`` satisfies a ``stored`` verifier (constant time)."""
        return self.epochs.tokens.matches(token, stored)

    def token_mac_of_digest(self, digest: bytes) -> str:
        """The verifier of a token known only by its SHA-256 ``digest``: how a verifier
        stored before key separation (plain SHA-256) is upgraded without the token."""
        return self.epochs.tokens.of_digest(digest)

    @property
    def row_auth(self) -> RowAuth:
        """The row-auth key (keys/rowauth.py): tags and checks the data store's rows.
        The key never leaves it."""
        return self.epochs.rows

    @property
    def blind_index(self) -> IndexKey:
        """The blind-index key (keys/blindindex.py): tags searchable fields' values.
        The key never leaves it."""
        return self.epochs.index

    # -- upgrading a keystore from before key separation (keys/epochs.py) --------------

    @property
    def upgrade_due(self) -> bool:
        """Whether the keystore has schema 1 and waits for :meth:`upgrade_keystore`.
        Until then token verifiers are made under the MAC seed the upgrade will store."""
        return self.epochs.upgrade_due

    def upgrade_keystore(self, note: str, created: str) -> bool:
        """Upgrade a schema-1 keystore in ONE transaction: every KEK epoch and signing
        seed re-wrapped under the wrap subkey, a MAC seed stored, the new key-check value
        and schema 2, and ``note`` kept as the pending upgrade (:meth:`upgrade_pending`)
        for the caller's own side; then the old wrappings are scrubbed from the file (a
        mark makes the next unlock finish a scrub a crash cut short). Afterwards exactly
        one scheme opens the keystore. Returns False when another process upgraded
        first (nothing written; this ring uses what that one stored)."""
        with self.store.transaction() as conn:
            done = self.epochs.upgrade(conn, note, created)
            if done:
                self.store.set_meta(conn, SCRUB_DUE, "1")
        self.epochs.adopt_upgrade()
        crash_point("migrate:before-scrub")
        self.finish_pending_scrub()
        return done

    def upgrade_pending(self) -> KeystoreUpgrade | None:
        """:meth:`KekEpochs.upgrade_pending`: an upgrade whose caller's side may be owed."""
        return self.epochs.upgrade_pending()

    def clear_upgrade_pending(self) -> None:
        """:meth:`KekEpochs.clear_upgrade_pending`, once the caller's side is done."""
        self.epochs.clear_upgrade_pending()

    # -- customers' keys ----------------------------------------------------------------

    def create_customers(
        self, customer_ids: Sequence[str], created: str, *, mark: tuple[str, str] | None = None
    ) -> dict[str, bytes]:
        """Make DEK version 1 and a random subject tag for each new customer, in one
        keystore transaction; returns the subject tags. Nothing is written on failure.
        ``mark`` (meta key, value) is set in the same transaction: how the caller
        finds keys a crash left without their customers (vault/customers.py)."""
        epoch = self.active_epoch
        kek = self._kek(epoch)
        material = os.urandom(32 * len(customer_ids))
        rows: list[DekRow] = []
        tags: dict[str, bytes] = {}
        fresh: dict[str, CustomerKeys] = {}
        for i, cid in enumerate(customer_ids):
            dek = SecretBytes(material[32 * i : 32 * (i + 1)])
            rows.append(
                DekRow(
                    cid,
                    1,
                    epoch,
                    kek.seal(dek.reveal(), dek_aad(self.vault_id, cid, 1, epoch)),
                    created,
                )
            )
            tags[cid] = os.urandom(SUBJECT_TAG_SIZE)
            env = Envelope(dek, 1)
            fresh[cid] = CustomerKeys(
                cid, env, {1: env}, tags[cid], record_aad_prefix(self.vault_id, cid)
            )
        with self.store.transaction() as conn:
            self.store.insert_deks(conn, rows)
            self.store.insert_subject_tags(conn, tags)
            if mark is not None:
                self.store.set_meta(conn, *mark)
        self._customers.update(fresh)
        return tags

    def customer_keys(self, customer_ids: Sequence[str]) -> dict[str, CustomerKeys]:
        """Unwrapped keys for the given customers (from cache, else one keystore read).

        Customers with no keys (never created, or shredded) are absent from the result.
        """
        cache = self._customers
        missing = [c for c in customer_ids if c not in cache]
        if missing:
            self._load(missing)
        # Another thread may forget a customer meanwhile (a shred): read each entry once.
        found = {c: cache.get(c) for c in customer_ids}
        return {c: keys for c, keys in found.items() if keys is not None}

    def _load(self, customer_ids: Sequence[str]) -> None:
        tags = self.store.subject_tags(customer_ids)
        by_customer: dict[str, dict[int, Envelope]] = {}
        for row in self.store.deks(customer_ids):
            kek = self._kek(row.epoch)
            if blob_key_version(row.wrapped) != row.epoch:
                raise KeystoreError(f"wrapped DEK of {row.customer_id} names the wrong epoch")
            try:
                raw = kek.open(
                    row.wrapped, dek_aad(self.vault_id, row.customer_id, row.version, row.epoch)
                )
            except DecryptionError:
                raise KeystoreError(
                    f"the DEK of {row.customer_id} (version {row.version}) failed to unwrap"
                ) from None
            by_customer.setdefault(row.customer_id, {})[row.version] = Envelope(
                SecretBytes(raw), row.version
            )
        for cid, versions in by_customer.items():
            if cid in tags:
                self._customers[cid] = CustomerKeys(
                    cid,
                    versions[max(versions)],
                    versions,
                    tags[cid],
                    record_aad_prefix(self.vault_id, cid),
                )

    def refresh(self, customer_id: str) -> None:
        """Forget and reload one customer's keys (another process may have rotated them)."""
        self.forget([customer_id])

    def forget(self, customer_ids: Sequence[str]) -> None:
        """Drop customers' unwrapped keys from memory."""
        for cid in customer_ids:
            self._customers.pop(cid, None)

    def receipt_salt(self, customer_id: str, *, create: bool = False) -> bytes | None:
        """The random salt of a customer's erasure receipt, made on first use when
        ``create``. It lives only here (and in the receipt) while a shred is under way,
        so no one holding the data store can test a guessed customer id against it."""
        salt = self.store.receipt_salt(customer_id)
        if salt is None and create:
            with self.store.transaction() as conn:
                self.store.put_receipt_salt(conn, customer_id, os.urandom(32))
            salt = self.store.receipt_salt(customer_id)
        return salt

    def drop_receipt_salt(self, customer_id: str) -> None:
        """Delete a customer's receipt salt once its receipt exists, then truncate the
        WAL. The salt table holds a row only while a shred is under way, so it stays one
        page that never rebalances: ``secure_delete`` zeroes the deleted cell and the
        truncation drops the WAL frames that held it; no rebuild is needed."""
        with self.store.transaction() as conn:
            gone = self.store.delete_receipt_salt(conn, customer_id)
        if gone and not self._deferring:
            self.store.erase_in_place()

    # -- scrubbing ---------------------------------------------------------------------

    @property
    def _deferring(self) -> bool:
        return bool(getattr(self._scrubbing, "deferring", False))

    @property
    def scrub_epoch(self) -> int:
        """The keystore's open scrub epoch (docs/keys.md, "Erasure in place")."""
        return self.store.scrub_state().epoch

    def _scrub(self) -> None:
        """After keys were destroyed in place: truncate the WAL (O(pages written)), and
        close the scrub epoch once its share of customers wait for it
        (:func:`~keys.erasure.scrub_every`)."""
        if self._deferring:  # inside this thread's scrub_once, its end scrubs once for all
            return
        self.store.erase_in_place()
        if self.store.scrub_state().full:
            self.store.scrub()

    @contextmanager
    def scrub_once(self) -> Iterator[ScrubOutcome]:
        """Many deletions, one scrub: inside, shredding customers and dropping DEK
        versions do not rebuild the keystore each time; leaving scrubs once (its cost
        grows with the keystore, so per customer it would dominate a bulk shred). A mark
        set first stays until that scrub is done, so after a crash the next unlock's
        :meth:`finish_pending_scrub` does it. ``outcome.done`` says whether it was done
        here (False if the WAL stayed pinned; the mark then stays too)."""
        outcome = ScrubOutcome()
        if self._deferring:  # nested: the outer one scrubs
            yield outcome
            outcome.done = True
            return
        with self.store.transaction() as conn:
            self.store.set_meta(conn, SCRUB_DUE, "1")
        self._scrubbing.deferring = True
        try:
            yield outcome
        finally:
            self._scrubbing.deferring = False
            outcome.done = self.finish_pending_scrub()

    def finish_pending_scrub(self) -> bool:
        """Scrub if a bulk deletion or a crash left the mark, or customers destroyed in
        place wait for their scrub epoch to close; True when no scrub is owed after."""
        if not self.store.scrub_state().owed:
            return True
        try:
            self.store.scrub()
        except KeystoreError:
            return False
        return True

    def fingerprints(self, customer_id: str) -> list[str]:
        """Fingerprints (SHA-256 of the wrapped bytes) of a customer's DEK versions."""
        rows = sorted(self.store.deks([customer_id]), key=lambda r: r.version)
        return [fingerprint(r.wrapped) for r in rows]

    def destroy_customer(self, customer_id: str) -> list[str]:
        """Destroy every DEK version and the subject tag of a customer by overwriting
        their cells in place, then truncate the WAL, so the bytes leave the keystore's
        files before this returns, in time independent of the keystore's size
        (docs/keys.md, "Erasure in place"). Returns
        fingerprints of what was destroyed (SHA-256 of the wrapped bytes). Idempotent:
        a second call returns []."""
        self.forget([customer_id])
        with self.store.transaction() as conn:
            rows = self.store.delete_customer(conn, customer_id)
        self._scrub()
        return [fingerprint(r.wrapped) for r in sorted(rows, key=lambda r: r.version)]

    def destroy_customers(self, customer_ids: Sequence[str]) -> None:
        """:meth:`destroy_customer` for many customers: ONE keystore transaction and
        one scrub, however many there are. Idempotent."""
        self.forget(customer_ids)
        with self.store.transaction() as conn:
            for cid in customer_ids:
                self.store.delete_customer(conn, cid)
        self._scrub()

    # -- DEK versions ------------------------------------------------------------------

    def add_dek_versions(self, after: Mapping[str, int], created: str) -> dict[str, int]:
        """Ensure each customer has a DEK version newer than ``after[customer]``, made
        in ONE keystore transaction, and return each one's newest: an unfinished
        rotation's version is reused rather than another made. Customers with no keys
        (shredded) are left out of the result."""
        newest: dict[str, int] = {}
        for row in self.store.deks(list(after)):
            newest[row.customer_id] = max(newest.get(row.customer_id, 0), row.version)
        epoch = self.active_epoch
        kek = self._kek(epoch)
        rows: list[DekRow] = []
        for cid, last in after.items():
            if cid in newest and newest[cid] <= last:
                version = newest[cid] = newest[cid] + 1
                aad = dek_aad(self.vault_id, cid, version, epoch)
                rows.append(DekRow(cid, version, epoch, kek.seal(os.urandom(32), aad), created))
        if rows:
            with self.store.transaction() as conn:
                self.store.insert_deks(conn, rows)
        self.forget(list(after))
        return newest

    def drop_dek_versions(self, below: Mapping[str, int]) -> list[str]:
        """Destroy each customer's DEK versions older than ``below[customer]`` in place,
        in ONE keystore transaction; truncate the WAL. Returns the fingerprints."""
        with self.store.transaction() as conn:
            rows = [r for c, v in below.items() for r in self.store.delete_dek_versions(conn, c, v)]
        self.forget(list(below))
        if rows:
            self._scrub()
        return [fingerprint(r.wrapped) for r in rows]

    # -- KEK epochs and the root key (keys/epochs.py; the rest through ``epochs``) ------

    def retire_epoch(self, epoch: int, *, pending_event: str | None = None) -> str:
        """:meth:`KekEpochs.retire_epoch`: delete an unused epoch, return its fingerprint."""
        return self.epochs.retire_epoch(epoch, pending_event=pending_event)

    def change_root(
        self,
        *,
        passphrase: bytes | None = None,
        keyfile_key: SecretBytes | None = None,
        params: KdfParams | None = None,
        pending_event: str | None = None,
    ) -> None:
        """Re-wrap every KEK epoch, the signing seed and the MAC seed under the root key
        (its wrap subkey) of exactly one new passphrase or keyfile, in ONE keystore
        transaction; token verifiers stay valid
        (:func:`~keys.root.new_root`, :meth:`KekEpochs.change_root`)."""
        new = new_root(passphrase, keyfile_key, params)
        self.epochs.change_root(new, pending_event=pending_event)

    # -- decommission (keys/decommission.py) -------------------------------------------

    def destroy_all_keys(self, *, record_as: str) -> dict[str, object]:
        """Forget every unwrapped key, then delete every KEK epoch, DEK, subject tag and
        receipt salt in ONE transaction and scrub; returns (and keeps, under meta
        ``record_as``) what went (:func:`~keys.decommission.destroy_all_keys`)."""
        self._customers.clear()
        self.epochs.forget()
        return destroy_all_keys(self.store, record_as=record_as)

    def destroy_signing_key(self, meta: dict[str, str]) -> None:
        """:func:`~keys.decommission.destroy_signing_seed`: afterwards this key ring (and
        any unlock of this keystore) can sign nothing. The caller scrubs the keystore."""
        self.signer = destroy_signing_seed(self.store, self.public_key, meta)

    def close(self) -> None:
        """Forget every unwrapped key and close the keystore."""
        self._customers.clear()
        self.epochs.forget()
        self.store.close()
