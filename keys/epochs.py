"""The root key and the KEK epochs it wraps (DESIGN §3), unwrapped for one key ring.

:class:`KekEpochs` unwraps every epoch at unlock (and again when another process has
added one), rotates the KEK (a new active epoch, every DEK re-wrapped under it in
resumable batches), retires epochs no DEK uses, and changes the root key: the epochs
and the signing seed re-wrapped under a new secret in one transaction. A key event
committed here whose log entry is not written yet is kept as a *pending event*.
"""

from __future__ import annotations

import hmac
import os
from typing import NoReturn

from .envelope import Envelope, dek_aad, fingerprint, kek_aad, signing_seed_aad
from .errors import DecryptionError, InvalidKeyError, KeystoreError, WrongKeyError
from .kdf import KdfParams, key_check_value
from .root import ROOT_VERSION, NewRoot, stored_kdf_params
from .secret import SecretBytes
from .store import KeyStore, KeystoreHeader

__all__ = ["PENDING_EVENT", "KekEpochs"]

PENDING_EVENT = "pending_event"  # keystore meta: a key event not yet logged


class KekEpochs:
    """The unwrapped root key and KEK epochs of one keystore. Not thread-safe."""

    def __init__(self, store: KeyStore, root: SecretBytes, header: KeystoreHeader) -> None:
        self.store = store
        self.vault_id = header.vault_id
        self._root = Envelope(root, ROOT_VERSION)
        self._header = header
        self._keks: dict[int, Envelope] = {}
        self._unwrap_keks()

    def __repr__(self) -> str:
        return f"<KekEpochs vault={self.vault_id} epochs={self.unwrapped()}, keys redacted>"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("KEK epochs cannot be pickled")

    # -- the root key ------------------------------------------------------------------

    @property
    def key_source(self) -> str:
        return self._header.key_source

    @property
    def kdf_params(self) -> KdfParams | None:
        """The header's KDF parameters; None for a keyfile vault."""
        if self._header.key_source != "passphrase":
            return None
        return stored_kdf_params(self._header)

    def _open_root(self, blob: bytes, context: bytes) -> SecretBytes:
        try:
            return SecretBytes(self._root.open(blob, context))
        except DecryptionError:
            raise KeystoreError("a key wrapped by the root key failed to unwrap") from None

    def unwrap_signing_seed(self, generation: int, wrapped: bytes) -> SecretBytes:
        """The Ed25519 seed of one generation; the caller wipes it once used."""
        return self._open_root(wrapped, signing_seed_aad(self.vault_id, generation))

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

    def change_root(self, new: NewRoot, *, pending_event: str | None = None) -> None:
        """Re-wrap every KEK epoch and the signing seed under ``new``, and swap the
        header's salt, KDF parameters and key-check value, all in ONE keystore
        transaction: afterwards exactly one of the old and new secrets works.
        ``pending_event`` is kept in the same transaction (see :meth:`pending_event`)."""
        meta = {
            "key_source": new.key_source,
            "kdf": new.kdf,
            "salt": new.salt.hex(),
            "key_check": key_check_value(new.root).hex(),
        }
        new_root = Envelope(new.root, ROOT_VERSION)
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
                seed = self.unwrap_signing_seed(generation, wrapped)
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

    # -- KEK epochs --------------------------------------------------------------------

    def _unwrap_keks(self) -> None:
        for epoch, wrapped in self.store.epochs().items():
            if epoch not in self._keks:
                kek = self._open_root(wrapped, kek_aad(self.vault_id, epoch))
                self._keks[epoch] = Envelope(kek, epoch)
                kek.wipe()

    def unwrapped(self) -> list[int]:
        """The epochs unwrapped in memory, oldest first."""
        return sorted(self._keks)

    def forget(self) -> None:
        """Drop every unwrapped KEK from memory (closing, decommission)."""
        self._keks.clear()

    @property
    def active_epoch(self) -> int:
        return int(self.store.get_meta("active_epoch") or self._header.active_epoch)

    def kek(self, epoch: int) -> Envelope:
        """The KEK of an epoch; :class:`KeystoreError` if the keystore has no such epoch."""
        if epoch not in self._keks:
            self._unwrap_keks()  # another process may have rotated
        try:
            return self._keks[epoch]
        except KeyError:
            raise KeystoreError(f"KEK epoch {epoch} is not in the keystore") from None

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

    def finish_kek_rotation(self) -> None:
        """Clear the in-progress mark once every DEK is under the active epoch."""
        with self.store.transaction() as conn:
            self.store.delete_meta(conn, "rotating_to")

    def rewrap_batch(self, limit: int = 2000) -> int:
        """Re-wrap up to ``limit`` DEKs that are not under the active epoch, in one
        keystore transaction; returns how many. Every DEK stays readable throughout:
        each row names the epoch that wraps it."""
        active = self.active_epoch
        kek = self.kek(active)
        rows = self.store.deks_outside_epoch(active, limit)
        raws: list[bytes] = []
        contexts: list[bytes] = []
        vid = self.vault_id
        for row in rows:
            try:
                raws.append(
                    self.kek(row.epoch).open(
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

    def retirable_epochs(self) -> list[int]:
        """Epochs other than the active one that wrap no DEK."""
        counts = self.store.dek_counts()
        active = self.active_epoch
        return [e for e in self.store.epochs() if e != active and not counts.get(e)]

    # -- pending key events ------------------------------------------------------------

    def pending_event(self) -> str | None:
        """A key event committed in the keystore whose log entry may not be written yet
        (the caller logs it, then :meth:`clear_pending_event`; a crash in between is
        finished at the next open). Opaque text for the caller."""
        return self.store.get_meta(PENDING_EVENT)

    def clear_pending_event(self) -> None:
        """Forget the pending event once its log entry is written."""
        with self.store.transaction() as conn:
            self.store.delete_meta(conn, PENDING_EVENT)
