"""shredvault's cryptography: key hierarchy, AEAD envelopes, KDF, signing, keystore.

This package knows nothing of customers' records, roles or the access log.
"""

from .envelope import (
    Envelope,
    aad,
    dek_aad,
    fingerprint,
    kek_aad,
    record_aad,
    signing_seed_aad,
)
from .errors import (
    DecryptionError,
    DiskFaultError,
    InvalidKeyError,
    KeysError,
    KeystoreError,
    OutputExistsError,
    UnsupportedFormatError,
    WeakParametersError,
    WrongKeyError,
    disk_fault,
    disk_fault_message,
)
from .kdf import (
    CEILING,
    FLOOR,
    KdfParams,
    derive_root_key,
    generate_keyfile,
    load_keyfile,
    needs_rehash,
    normalize_passphrase,
    recommended_params,
)
from .keyring import CustomerKeys, KeyRing
from .secret import SecretBytes
from .signing import Signer, verify_signature
from .store import KeyStore

__all__ = [
    "CEILING",
    "FLOOR",
    "CustomerKeys",
    "DecryptionError",
    "DiskFaultError",
    "Envelope",
    "InvalidKeyError",
    "KdfParams",
    "KeyRing",
    "KeyStore",
    "KeysError",
    "KeystoreError",
    "OutputExistsError",
    "SecretBytes",
    "Signer",
    "UnsupportedFormatError",
    "WeakParametersError",
    "WrongKeyError",
    "aad",
    "dek_aad",
    "derive_root_key",
    "disk_fault",
    "disk_fault_message",
    "fingerprint",
    "generate_keyfile",
    "kek_aad",
    "load_keyfile",
    "needs_rehash",
    "normalize_passphrase",
    "recommended_params",
    "record_aad",
    "signing_seed_aad",
    "verify_signature",
]
