"""The unlocked key hierarchy (DESIGN §3): root -> KEK epochs -> per-customer DEKs.

A :class:`KeyRing` owns an open :class:`~keys.store.KeyStore` and the root key. It
unwraps KEK epochs and the signing seed at unlock, and DEKs on demand, caching one
:class:`~keys.envelope.Envelope` per customer and version so hot paths never unwrap
per record. Dropping a customer from the cache (:meth:`KeyRing.forget`) is part of
shredding and rotation.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .envelope import (
    Envelope,
    blob_key_version,
    dek_aad,
    fingerprint,
    kek_aad,
    record_aad_prefix,
    signing_seed_aad,
)
from .errors import DecryptionError, InvalidKeyError, KeystoreError, WrongKeyError
from .kdf import (
    SALT_SIZE,
    KdfParams,
    check_floor,
    check_key,
    derive_root_key,
    key_check_value,
    recommended_params,
)
from .secret import SecretBytes
from .signing import Signer
from .store import DekRow, KeyStore, KeystoreHeader

__all__ = ["SUBJECT_TAG_SIZE", "CustomerKeys", "KeyRing"]

SUBJECT_TAG_SIZE = 16
PENDING_EVENT = "pending_event"  # keystore meta: a key event not yet logged
SCRUB_DUE = "scrub_due"  # keystore meta: deletions made that a scrub has not yet erased


@dataclass(slots=True)
class ScrubOutcome:
    """Set when :meth:`KeyRing.scrub_once` ends: whether its scrub was done."""

    done: bool = False


_ROOT_VERSION = 0  # the root key has no versions; wrapped KEKs and seeds name version 0


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


def _kdf_params(header: KeystoreHeader) -> KdfParams:
    try:
        return KdfParams.from_dict(json.loads(header.kdf))
    except (ValueError, KeyError, TypeError):
        raise KeystoreError("the keystore header holds damaged KDF parameters") from None


class KeyRing:
    """An unlocked keystore. Not thread-safe; one per open vault."""

    def __init__(self, store: KeyStore, root: SecretBytes, header: KeystoreHeader) -> None:
        self.store = store
        self.vault_id = header.vault_id
        self._root = Envelope(root, _ROOT_VERSION)
        self._header = header
        self._keks: dict[int, Envelope] = {}
        self._customers: dict[str, CustomerKeys] = {}
        self._deferring = False
        self._unwrap_keks()
        generation, wrapped_seed, public = store.signing_seed()
        seed = self._open_root(wrapped_seed, signing_seed_aad(self.vault_id, generation))
        self.signer = Signer(seed)
        seed.wipe()
        if self.signer.public_key != public:
            raise KeystoreError("the keystore's public key does not match its signing seed")
        self.public_key = public

    def __repr__(self) -> str:
        return f"<KeyRing vault={self.vault_id} epochs={sorted(self._keks)}, keys redacted>"

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
        """Create ``keys.db`` with a first KEK epoch and a signing seed, and unlock it."""
        if (passphrase is None) == (keyfile_key is None):
            raise InvalidKeyError("give exactly one of a passphrase or a keyfile key")
        if passphrase is not None:
            params = params or recommended_params()
            salt = os.urandom(SALT_SIZE)
            root = derive_root_key(passphrase, salt, params)
            source, kdf = "passphrase", json.dumps(params.to_dict(), sort_keys=True)
        else:
            assert keyfile_key is not None
            root, salt, source, kdf = keyfile_key, b"", "keyfile", ""
        header = KeystoreHeader(
            vault_id=vault_id,
            schema_version=1,
            key_source=source,
            kdf=kdf,
            salt=salt,
            key_check=key_check_value(root),
            active_epoch=1,
            created=created,
        )
        store = KeyStore.create(path, header)
        try:
            wrap = Envelope(root, _ROOT_VERSION)
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
        root = cls._root_key(header, passphrase, keyfile_key)
        check_key(root, header.key_check)
        return cls(store, root, header)

    @staticmethod
    def _root_key(
        header: KeystoreHeader, passphrase: bytes | None, keyfile_key: SecretBytes | None
    ) -> SecretBytes:
        if header.key_source == "passphrase":
            if passphrase is None:
                raise InvalidKeyError("this vault is unlocked with a passphrase")
            params = _kdf_params(header)
            check_floor(params)
            return derive_root_key(passphrase, header.salt, params)
        if header.key_source == "keyfile":
            if keyfile_key is None:
                raise InvalidKeyError("this vault is unlocked with a keyfile")
            return keyfile_key
        raise KeystoreError(f"unknown key source {header.key_source!r} in keystore header")

    @property
    def kdf_params(self) -> KdfParams | None:
        if self._header.key_source != "passphrase":
            return None
        return _kdf_params(self._header)

    @property
    def key_source(self) -> str:
        return self._header.key_source

    def _open_root(self, blob: bytes, context: bytes) -> SecretBytes:
        try:
            return SecretBytes(self._root.open(blob, context))
        except DecryptionError:
            raise KeystoreError("a key wrapped by the root key failed to unwrap") from None

    def _unwrap_keks(self) -> None:
        for epoch, wrapped in self.store.epochs().items():
            if epoch not in self._keks:
                kek = self._open_root(wrapped, kek_aad(self.vault_id, epoch))
                self._keks[epoch] = Envelope(kek, epoch)
                kek.wipe()

    @property
    def active_epoch(self) -> int:
        return int(self.store.get_meta("active_epoch") or self._header.active_epoch)

    def _kek(self, epoch: int) -> Envelope:
        if epoch not in self._keks:
            self._unwrap_keks()  # another process may have rotated
        try:
            return self._keks[epoch]
        except KeyError:
            raise KeystoreError(f"KEK epoch {epoch} is not in the keystore") from None

    # -- customers' keys ----------------------------------------------------------------

    def create_customers(self, customer_ids: Sequence[str], created: str) -> dict[str, bytes]:
        """Make DEK version 1 and a random subject tag for each new customer, in one
        keystore transaction; returns the subject tags. Nothing is written on failure."""
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
        return {c: cache[c] for c in customer_ids if c in cache}

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
        """Delete a customer's receipt salt once its receipt exists; scrub the keystore."""
        with self.store.transaction() as conn:
            gone = self.store.delete_receipt_salt(conn, customer_id)
        if gone:
            self._scrub()

    # -- scrubbing ---------------------------------------------------------------------

    def _scrub(self) -> None:
        if not self._deferring:  # inside scrub_once, its end scrubs once for all
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
        self._deferring = True
        try:
            yield outcome
        finally:
            self._deferring = False
            outcome.done = self.finish_pending_scrub()

    def finish_pending_scrub(self) -> bool:
        """Scrub if a bulk deletion left the mark; True when no scrub is owed after."""
        if self.store.get_meta(SCRUB_DUE) is None:
            return True
        try:
            self.store.scrub()
            with self.store.transaction() as conn:
                self.store.delete_meta(conn, SCRUB_DUE)
        except KeystoreError:
            return False
        return True

    def fingerprints(self, customer_id: str) -> list[str]:
        """Fingerprints (SHA-256 of the wrapped bytes) of a customer's DEK versions."""
        rows = sorted(self.store.deks([customer_id]), key=lambda r: r.version)
        return [fingerprint(r.wrapped) for r in rows]

    def destroy_customer(self, customer_id: str) -> list[str]:
        """Delete every DEK version and the subject tag of a customer, then scrub the
        keystore (``store.scrub``) so the deleted bytes leave its files. Returns
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

    # -- rotation -----------------------------------------------------------------------

    def begin_kek_rotation(self, created: str) -> tuple[int, bool]:
        """Make a new active KEK epoch, unless DEKs still sit under older epochs (an
        unfinished rotation), in which case the active epoch is kept. Returns
        ``(active epoch, whether it is new)``."""
        kek = SecretBytes(os.urandom(32))
        try:
            # Decide and write in one transaction: another process may be rotating or
            # changing the passphrase at the same moment.
            with self.store.transaction() as conn:
                self._check_root_unchanged()
                active = self.active_epoch
                # Unfinished: marked as such (a crash after the last batch leaves no
                # DEK outside the epoch, yet the rotation never finished), or DEKs
                # still outside.
                if self.store.get_meta("rotating_to") == str(
                    active
                ) or self.store.deks_outside_epoch(active, 1):
                    return active, False
                epoch = max(self.store.epochs()) + 1
                wrapped = self._root.seal(kek.reveal(), kek_aad(self.vault_id, epoch))
                self.store.add_epoch(conn, epoch, wrapped, created)
                self.store.set_meta(conn, "active_epoch", str(epoch))
                self.store.set_meta(conn, "rotating_to", str(epoch))
            self._keks[epoch] = Envelope(kek, epoch)
            return epoch, True
        finally:
            kek.wipe()

    def _check_root_unchanged(self) -> None:
        """Inside a keystore write transaction, before wrapping anything under the root
        key: refuse if another process changed the passphrase or keyfile since this
        key ring unlocked (what it wrapped would open with neither secret)."""
        current = self.store.header().key_check
        if not hmac.compare_digest(current, self._header.key_check):
            raise WrongKeyError(
                "the vault's passphrase or keyfile was changed by another process since "
                "this one unlocked it; open the vault again with the new one"
            )

    def finish_kek_rotation(self) -> None:
        """Clear the in-progress mark once every DEK is under the active epoch."""
        with self.store.transaction() as conn:
            self.store.delete_meta(conn, "rotating_to")

    def rewrap_batch(self, limit: int = 2000) -> int:
        """Re-wrap up to ``limit`` DEKs that are not under the active epoch, in one
        keystore transaction; returns how many. Every DEK stays readable throughout:
        each row names the epoch that wraps it."""
        active = self.active_epoch
        kek = self._kek(active)
        rows = self.store.deks_outside_epoch(active, limit)
        raws: list[bytes] = []
        contexts: list[bytes] = []
        vid = self.vault_id
        for row in rows:
            try:
                raws.append(
                    self._kek(row.epoch).open(
                        row.wrapped, dek_aad(vid, row.customer_id, row.version, row.epoch)
                    )
                )
            except DecryptionError:
                raise KeystoreError(f"the DEK of {row.customer_id} failed to unwrap") from None
            contexts.append(dek_aad(vid, row.customer_id, row.version, active))
        sealed = kek.seal_many(raws, contexts)
        updates = [
            (active, new, row.customer_id, row.version, row.epoch)
            for row, new in zip(rows, sealed, strict=True)
        ]
        if updates:
            with self.store.transaction() as conn:
                self.store.rewrap_deks(conn, updates)
        return len(updates)

    def retire_epoch(self, epoch: int, *, pending_event: str | None = None) -> str:
        """Delete a KEK epoch no DEK uses any more; returns the fingerprint of what was
        deleted. Refuses the active epoch or one still in use. The caller scrubs the
        keystore (``store.scrub``) once the deletion is recorded. ``pending_event`` is
        kept in the same transaction (see :meth:`pending_event`)."""
        if epoch == self.active_epoch:
            raise InvalidKeyError(f"epoch {epoch} is the active epoch")
        in_use = self.store.dek_counts().get(epoch, 0)
        if in_use:
            raise InvalidKeyError(f"epoch {epoch} still wraps {in_use} DEK(s): finish the rotation")
        with self.store.transaction() as conn:
            wrapped = self.store.delete_epoch(conn, epoch)
            if wrapped is not None and pending_event is not None:
                self.store.set_meta(conn, PENDING_EVENT, pending_event)
        if wrapped is None:
            raise InvalidKeyError(f"there is no epoch {epoch}")
        self._keks.pop(epoch, None)
        return fingerprint(wrapped)

    def pending_event(self) -> str | None:
        """A key event committed in the keystore whose log entry may not be written yet
        (the caller logs it, then :meth:`clear_pending_event`; a crash in between is
        finished at the next open). Opaque text for the caller."""
        return self.store.get_meta(PENDING_EVENT)

    def clear_pending_event(self) -> None:
        with self.store.transaction() as conn:
            self.store.delete_meta(conn, PENDING_EVENT)

    def retirable_epochs(self) -> list[int]:
        counts = self.store.dek_counts()
        active = self.active_epoch
        return [e for e in self.store.epochs() if e != active and not counts.get(e)]

    def add_dek_version(self, customer_id: str, created: str, *, after: int) -> int:
        """Ensure the customer has a DEK version newer than ``after`` and return the
        newest: an unfinished rotation's version is reused rather than another made."""
        rows = self.store.deks([customer_id])
        if not rows:
            raise KeystoreError(f"customer {customer_id} has no keys")
        newest = max(r.version for r in rows)
        if newest > after:
            return newest
        version = newest + 1
        epoch = self.active_epoch
        dek = os.urandom(32)
        wrapped = self._kek(epoch).seal(dek, dek_aad(self.vault_id, customer_id, version, epoch))
        with self.store.transaction() as conn:
            self.store.insert_deks(conn, [DekRow(customer_id, version, epoch, wrapped, created)])
        self.forget([customer_id])
        return version

    def drop_dek_versions(self, customer_id: str, below: int) -> list[str]:
        """Delete a customer's DEK versions older than ``below``; scrub the keystore."""
        with self.store.transaction() as conn:
            rows = self.store.delete_dek_versions(conn, customer_id, below)
        self.forget([customer_id])
        if rows:
            self._scrub()
        return [fingerprint(r.wrapped) for r in rows]

    def change_root(
        self,
        *,
        passphrase: bytes | None = None,
        keyfile_key: SecretBytes | None = None,
        params: KdfParams | None = None,
        pending_event: str | None = None,
    ) -> None:
        """Re-wrap every KEK epoch and the signing seed under a new root key, and swap
        the header's salt, KDF parameters and key-check value, all in ONE keystore
        transaction: afterwards exactly one of the old and new secrets works.
        ``pending_event`` is kept in the same transaction (see :meth:`pending_event`)."""
        if (passphrase is None) == (keyfile_key is None):
            raise InvalidKeyError("give exactly one of a passphrase or a keyfile key")
        if passphrase is not None:
            params = params or recommended_params()
            salt = os.urandom(SALT_SIZE)
            root = derive_root_key(passphrase, salt, params)
            meta = {
                "key_source": "passphrase",
                "kdf": json.dumps(params.to_dict(), sort_keys=True),
                "salt": salt.hex(),
            }
        else:
            assert keyfile_key is not None
            root = keyfile_key
            meta = {"key_source": "keyfile", "kdf": "", "salt": ""}
        meta["key_check"] = key_check_value(root).hex()
        new_root = Envelope(root, _ROOT_VERSION)
        # Read and re-wrap inside the write transaction, so an epoch another process
        # adds meanwhile cannot be left wrapped under the old root.
        with self.store.transaction() as conn:
            self._check_root_unchanged()
            epochs: dict[int, bytes] = {}
            for epoch, wrapped in self.store.epochs().items():
                kek = self._open_root(wrapped, kek_aad(self.vault_id, epoch))
                epochs[epoch] = new_root.seal(kek.reveal(), kek_aad(self.vault_id, epoch))
                kek.wipe()
            seeds: dict[int, bytes] = {}
            for generation, wrapped in self.store.signing_seeds().items():
                seed = self._open_root(wrapped, signing_seed_aad(self.vault_id, generation))
                seeds[generation] = new_root.seal(
                    seed.reveal(), signing_seed_aad(self.vault_id, generation)
                )
                seed.wipe()
            self.store.replace_root_wrapped(conn, epochs, seeds, meta)
            if pending_event is not None:
                self.store.set_meta(conn, PENDING_EVENT, pending_event)
        self.store.scrub()  # old wrappings leave the file and the WAL too
        self._root = new_root
        self._header = self.store.header()

    # -- decommission -----------------------------------------------------------------

    def destroy_all_keys(self, *, record_as: str) -> dict[str, object]:
        """Delete every KEK epoch, DEK, subject tag and receipt salt in ONE keystore
        transaction, then scrub the keystore. What went (epoch fingerprints, counts) is
        stored in the same transaction under meta ``record_as`` and returned, so a rerun
        after a crash returns the same summary and deletes nothing more."""
        self._customers.clear()
        self._keks.clear()
        with self.store.transaction() as conn:
            kept = conn.execute("SELECT v FROM meta WHERE k = ?", (record_as,)).fetchone()
            if kept is None:
                epochs, deks, tags = self.store.delete_all_keys(conn)
                summary: dict[str, object] = {
                    "kek_epochs": [
                        {"epoch": e, "fingerprint": fingerprint(w)}
                        for e, w in sorted(epochs.items())
                    ],
                    "deks": deks,
                    "subject_tags": tags,
                }
                self.store.set_meta(conn, record_as, json.dumps(summary, sort_keys=True))
            else:
                self.store.delete_all_keys(conn)  # anything made since (nothing, normally)
                summary = json.loads(kept[0])
        self.store.scrub()
        return summary

    def destroy_signing_key(self, meta: dict[str, str]) -> None:
        """Delete the wrapped signing seed, keeping the public key in meta for
        verifiers, and set ``meta`` in the same transaction. Afterwards this key ring
        (and any unlock of this keystore) can sign nothing. The caller scrubs the
        keystore (``store.scrub``) once this commits."""
        with self.store.transaction() as conn:
            self.store.set_meta(conn, "public_key", self.public_key.hex())
            for key, value in meta.items():
                self.store.set_meta(conn, key, value)
            self.store.delete_signing_seeds(conn)
        self.signer = _DestroyedSigner(self.public_key)

    def close(self) -> None:
        self._customers.clear()
        self._keks.clear()
        self.store.close()


class _DestroyedSigner(Signer):
    """Stands in for a signer whose seed was destroyed: it has a public key, and
    refuses to sign."""

    def __init__(self, public_key: bytes) -> None:  # no seed: nothing to build
        self.public_key = public_key

    def __repr__(self) -> str:
        return f"<Signer public_key={self.public_key.hex()[:16]}..., seed destroyed>"

    def sign(self, message: bytes) -> bytes:
        raise KeystoreError("the signing key was destroyed (the vault is decommissioned)")
