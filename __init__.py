"""shredvault: per-customer encrypted records, a hash-chained access log, crypto-shredding.

The one import root. ``from shredvault import Vault`` is the documented way in: the
public API of :mod:`shredvault.vault` is re-exported here (listed once, in its
``__all__``), and nothing else is public. :mod:`shredvault.keys` (the cryptography)
stays usable on its own.
"""

from .vault import *  # noqa: F403 - the public API, named once in vault.__all__
from .vault import __all__ as __all__
