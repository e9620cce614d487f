"""The root key's subkeys and what they wrap (DESIGN §3), unwrapped for one key ring.

:class:`KekEpochs` unwraps every KEK epoch at unlock (and again when another process
has added one) and the MAC seed (whose token-MAC subkey checks principals' tokens),
rotates the KEK (a new active epoch, every DEK re-wrapped under it in resumable
batches), retires epochs no DEK uses, and changes the root key: the epochs, signing
seeds and MAC seed re-wrapped under a new secret in one transaction. It also upgrades
a keystore from before key separation (schema 1, where the root key itself wrapped
and was checked) in one transaction. A key event committed here whose log entry is not
written yet is kept as a *pending event*.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
from dataclasses import dataclass
from typing import NoReturn

from .blindindex import IndexKey
from .envelope import Envelope, dek_aad, fingerprint, kek_aad, mac_seed_aad, signing_seed_aad
from .errors import DecryptionError, InvalidKeyError, KeystoreError, WrongKeyError
from .faults import crash_point
from .kdf import KdfParams
from .root import LEGACY_SCHEMA, NewRoot, RootKeys, stored_kdf_params
from .rowauth import RowAuth
from .secret import SecretBytes
from .store import SCHEMA_VERSION, KeyStore, KeystoreHeader
from .subkeys import BLIND_INDEX, ROW_AUTH, SUBKEY_SIZE, TOKEN_MAC, derive_subkey
from .tokenmac import TokenMac

__all__ = ["PENDING_EVENT", "UPGRADE_PENDING", "KekEpochs", "KeystoreUpgrade"]

PENDING_EVENT = "pending_event"  # keystore meta: a key event not yet logged
UPGRADE_PENDING = "upgrade_pending"  # keystore meta: an upgrade whose data side may be owed


@dataclass(frozen=True, slots=True)
class KeystoreUpgrade:
    """A keystore upgrade that committed, kept until the caller has done its side
    (:meth:`KekEpochs.upgrade_pending`): what was re-wrapped, and the caller's note."""

    from_schema: int
    to_schema: int
    kek_epochs: int
    signing_seeds: int
    note: str  # opaque text the caller gave to :meth:`KekEpochs.upgrade`


class KekEpochs:
    """The unwrapped root key and KEK epochs of one keystore. Not thread-safe."""

    def __init__(self, store: KeyStore, root: SecretBytes, header: KeystoreHeader) -> None:
        self.store = store
        self.vault_id = header.vault_id
        self._keys = RootKeys(root, self.vault_id, header.schema_version)
        self._header = header
        self._keks: dict[int, Envelope] = {}
        self._unwrap_keks()
        # A schema-1 keystore waits for :meth:`upgrade`: the keys it will use, and the
        # MAC seed it will store, are made now (the root key is not kept).
        self._next: RootKeys | None = None
        self._new_mac_seed: SecretBytes | None = None
        self._tokens: TokenMac | None = None
        self._rows: RowAuth | None = None
        self._index: IndexKey | None = None
        if header.schema_version == LEGACY_SCHEMA:
            self._next = RootKeys(root, self.vault_id, SCHEMA_VERSION)
            self._new_mac_seed = SecretBytes(os.urandom(SUBKEY_SIZE))
            self._tokens = self._token_mac(self._new_mac_seed)
        else:
            self._tokens = self._load_tokens(self._keys)

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

    def _open_root(self, blob: bytes, context: bytes, keys: RootKeys | None = None) -> SecretBytes:
        try:
            return SecretBytes((keys or self._keys).wrap.open(blob, context))
        except DecryptionError:
            raise KeystoreError("a key wrapped by the root key failed to unwrap") from None

    # -- the MAC seed and token verifiers ------------------------------------------------

    def _token_mac(self, mac_seed: SecretBytes) -> TokenMac:
        """The token-MAC key of ``mac_seed``; the row-auth and blind-index keys of
        the same seed are kept alongside (all derive from the MAC seed, and change
        together)."""
        rows = derive_subkey(mac_seed, ROW_AUTH, self.vault_id)
        try:
            if self._rows is not None:
                self._rows.wipe()
            self._rows = RowAuth(rows)
        finally:
            rows.wipe()
        index = derive_subkey(mac_seed, BLIND_INDEX, self.vault_id)
        try:
            if self._index is not None:
                self._index.wipe()
            self._index = IndexKey(index)
        finally:
            index.wipe()
        key = derive_subkey(mac_seed, TOKEN_MAC, self.vault_id)
        try:
            return TokenMac(key)
        finally:
            key.wipe()

    def _load_tokens(self, keys: RootKeys) -> TokenMac:
        wrapped = self.store.mac_seed()
        if wrapped is None:
            raise KeystoreError("the keystore holds no MAC seed (damaged keystore)")
        seed = self._open_root(wrapped, mac_seed_aad(self.vault_id), keys)
        try:
            return self._token_mac(seed)
        finally:
            seed.wipe()

    @property
    def tokens(self) -> TokenMac:
        """The token-MAC key (:class:`KeystoreError` once the keys are forgotten)."""
        if self._tokens is None:
            raise KeystoreError("the keys of this key ring were forgotten")
        return self._tokens

    @property
    def rows(self) -> RowAuth:
        """The row-auth key (:class:`KeystoreError` once the keys are forgotten)."""
        if self._rows is None:
            raise KeystoreError("the keys of this key ring were forgotten")
        return self._rows

    @property
    def index(self) -> IndexKey:
        """The blind-index key (:class:`KeystoreError` once the keys are forgotten)."""
        if self._index is None:
            raise KeystoreError("the keys of this key ring were forgotten")
        return self._index

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

    def _rewrapped(self, wrap: Envelope) -> tuple[dict[int, bytes], dict[int, bytes], bytes | None]:
        """Every epoch, signing seed and the MAC seed (if stored), unwrapped with the
        current keys and sealed under ``wrap``. Call inside a write transaction."""
        vid = self.vault_id
        epochs: dict[int, bytes] = {}
        for epoch, wrapped in self.store.epochs().items():
            kek = self._open_root(wrapped, kek_aad(vid, epoch))
            epochs[epoch] = wrap.seal(kek.reveal(), kek_aad(vid, epoch))
            kek.wipe()
        seeds: dict[int, bytes] = {}
        for generation, wrapped in self.store.signing_seeds().items():
            seed = self.unwrap_signing_seed(generation, wrapped)
            seeds[generation] = wrap.seal(seed.reveal(), signing_seed_aad(vid, generation))
            seed.wipe()
        stored = self.store.mac_seed()
        mac_seed = None
        if stored is not None:
            raw = self._open_root(stored, mac_seed_aad(vid))
            mac_seed = wrap.seal(raw.reveal(), mac_seed_aad(vid))
            raw.wipe()
        return epochs, seeds, mac_seed

    def change_root(self, new: NewRoot, *, pending_event: str | None = None) -> None:
        """Re-wrap every KEK epoch, the signing seeds and the MAC seed under the wrap
        subkey of ``new``, and swap the header's salt, KDF parameters and key-check
        value, all in ONE keystore transaction: afterwards exactly one of the old and
        new secrets works. Token verifiers stay valid (the MAC seed is kept).
        ``pending_event`` is kept in the same transaction (see :meth:`pending_event`).
        Refuses a keystore not yet upgraded (:meth:`upgrade`): :class:`KeystoreError`."""
        if self._next is not None:
            raise KeystoreError(
                "this keystore predates key separation: open the vault once (which "
                "upgrades it) before changing its passphrase or keyfile"
            )
        new_keys = RootKeys(new.root, self.vault_id, SCHEMA_VERSION)
        meta = {
            "key_source": new.key_source,
            "kdf": new.kdf,
            "salt": new.salt.hex(),
            "key_check": new_keys.key_check.hex(),
        }
        # Read and re-wrap inside the write transaction, so an epoch another process
        # adds meanwhile cannot be left wrapped under the old root.
        with self.store.transaction() as conn:
            self._check_root_unchanged()
            epochs, seeds, mac_seed = self._rewrapped(new_keys.wrap)
            self.store.replace_root_wrapped(conn, epochs, seeds, meta, mac_seed)
            if pending_event is not None:
                self.store.set_meta(conn, PENDING_EVENT, pending_event)
        self.store.scrub()  # old wrappings leave the file and the WAL too
        self._keys = new_keys
        self._header = self.store.header()

    # -- upgrading a keystore from before key separation ---------------------------------

    @property
    def upgrade_due(self) -> bool:
        """Whether this keystore still has schema 1 (see :meth:`upgrade`)."""
        return self._next is not None

    def upgrade(self, conn: sqlite3.Connection, note: str, created: str) -> bool:
        """Upgrade a schema-1 keystore in the caller's write transaction ``conn``:
        check the old key-check value again, re-wrap every KEK epoch and signing seed
        under the wrap subkey, store a new MAC seed, the new key-check value and
        schema 2, and keep ``note`` with what was re-wrapped as the pending upgrade
        (:meth:`upgrade_pending`). Returns False, changing nothing, when another
        process upgraded first (this key ring then uses what it stored), or when
        this key ring's keystore had schema 2 already."""
        upgraded, mac_seed_raw = self._next, self._new_mac_seed
        if upgraded is None or mac_seed_raw is None:
            return False
        header = self.store.header()
        if header.schema_version != LEGACY_SCHEMA:
            if not hmac.compare_digest(header.key_check, upgraded.key_check):
                raise WrongKeyError(
                    "the vault's passphrase or keyfile was changed by another process "
                    "since this one unlocked it; open the vault again with the new one"
                )
            self._adopt(upgraded, header, self._load_tokens(upgraded))
            return False
        self._check_root_unchanged()
        epochs, seeds, _none = self._rewrapped(upgraded.wrap)
        pending = {
            "from": LEGACY_SCHEMA,
            "to": SCHEMA_VERSION,
            "kek_epochs": len(epochs),
            "signing_seeds": len(seeds),
            "note": note,
        }
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "key_check": upgraded.key_check.hex(),
            UPGRADE_PENDING: json.dumps(pending, sort_keys=True),
        }
        mac_seed = upgraded.wrap.seal(mac_seed_raw.reveal(), mac_seed_aad(self.vault_id))
        self.store.replace_root_wrapped(conn, epochs, seeds, meta)
        self.store.add_mac_seed(conn, mac_seed, created)
        crash_point("migrate:keystore-uncommitted")
        return True

    def adopt_upgrade(self) -> None:
        """After :meth:`upgrade` committed: use the new keys from now on."""
        if self._next is not None:
            self._adopt(self._next, self.store.header(), self._tokens)

    def _adopt(self, keys: RootKeys, header: KeystoreHeader, tokens: TokenMac | None) -> None:
        self._keys, self._next, self._header = keys, None, header
        self._tokens = tokens
        if self._new_mac_seed is not None:
            self._new_mac_seed.wipe()
            self._new_mac_seed = None

    def upgrade_pending(self) -> KeystoreUpgrade | None:
        """An upgrade that committed here and whose note the caller has not cleared."""
        raw = self.store.get_meta(UPGRADE_PENDING)
        if raw is None:
            return None
        try:
            kept = json.loads(raw)
            return KeystoreUpgrade(
                int(kept["from"]),
                int(kept["to"]),
                int(kept["kek_epochs"]),
                int(kept["signing_seeds"]),
                str(kept["note"]),
            )
        except (ValueError, KeyError, TypeError):
            raise KeystoreError("the keystore's pending upgrade record is damaged") from None

    def clear_upgrade_pending(self) -> None:
        """Forget the pending upgrade once the caller's side of it is done."""
        with self.store.transaction() as conn:
            self.store.delete_meta(conn, UPGRADE_PENDING)

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
        """Drop every unwrapped KEK and the token-MAC key from memory (closing,
        decommission)."""
        self._keks.clear()
        if self._tokens is not None:
            self._tokens.wipe()
            self._tokens = None
        if self._rows is not None:
            self._rows.wipe()
            self._rows = None
        if self._index is not None:
            self._index.wipe()
            self._index = None

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
                wrapped = self._keys.wrap.seal(kek.reveal(), kek_aad(self.vault_id, epoch))
                self.store.add_epoch(conn, epoch, wrapped, created)
                self.store.set_meta(conn, "active_epoch", str(epoch))
                self.store.set_meta(conn, "rotating_to", str(epoch))
            self._keks[epoch] = Envelope(kek, epoch)
            return epoch, True
        finally:
            kek.wipe()

    def finish_kek_rotation(self) -> None:
        """Clear the in-progress mark once every DEK is under the active epoch, then
        scrub the keystore: re-wrapped rows may have moved (``rewrap_deks``), and a
        moved row leaves a copy of its old bytes in the page it left."""
        with self.store.transaction() as conn:
            self.store.delete_meta(conn, "rotating_to")
        if self.store.scrub_state().owed:
            self.store.scrub()

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
