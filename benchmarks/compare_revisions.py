"""put_many / get_many of this checkout against another revision, in one process.

Usage::

    .venv/bin/python benchmarks/compare_revisions.py REV [rounds]

``git archive REV`` is unpacked under a temporary directory as the package
``shredvault_old`` (the library imports relatively, so it runs as it was); each round
then times, alternating old and new on vaults of their own (SQLite, same keyfile kind,
100 customers, 1,000 1 KiB records per call, the harness's fields), ``put_many`` and
``get_many``: wall time and ``time.process_time()``. Alternating rounds share the
machine's load, so the ratios (new / old) hold on a busy machine where the absolute
figures do not. Prints medians and the fastest rounds.
"""

from __future__ import annotations

import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from harness import BATCH, CUSTOMERS, FIELDS, KIND, PURPOSE, record_fields

ROOT = Path(__file__).resolve().parent.parent


def unpack(rev: str, into: Path) -> None:
    target = into / "shredvault_old"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


class Side:
    """A vault of one revision, ready for put_many / get_many of one batch."""

    def __init__(self, pkg: ModuleType, keys: ModuleType, root: Path) -> None:
        keyfile = root / "vault.key"
        keys.generate_keyfile(keyfile)
        self.vault = pkg.Vault.create(root / "vault", keyfile=keyfile)
        self.vault.declare_kind(KIND, fields=FIELDS, purposes=[PURPOSE, "billing"])
        self.session = self.vault.admin()
        cids = [self.session.add_customer() for _ in range(CUSTOMERS)]
        self.items = [(cids[i % CUSTOMERS], KIND, record_fields(i)) for i in range(BATCH)]
        rids = self.session.put_many(self.items, purpose=PURPOSE)
        self.pairs = [(c, r) for (c, _k, _f), r in zip(self.items, rids, strict=True)]
        self.session.get_many(self.pairs, purpose=PURPOSE)  # warm every cache

    def run(self, op: str) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        if op == "put_many":
            self.session.put_many(self.items, purpose=PURPOSE)
        else:
            self.session.get_many(self.pairs, purpose=PURPOSE)
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    rev = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        unpack(rev, base)
        sys.path.insert(0, str(base))
        sides: dict[str, Side] = {}
        for name, pkg_name in (("old", "shredvault_old"), ("new", "shredvault")):
            (base / name).mkdir()
            pkg = importlib.import_module(pkg_name)
            keys = importlib.import_module(f"{pkg_name}.keys")
            sides[name] = Side(pkg, keys, base / name)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for i in range(rounds):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for op in ("put_many", "get_many"):
                for name in order:
                    times.setdefault((op, name), []).append(sides[name].run(op))
        for side in sides.values():
            side.vault.close()
    print(f"{rounds} rounds of {BATCH} records, alternating; µs per record")
    print(f"{'op':<9} {'measure':<13} {'old':>7} {'new':>7} {'new/old':>8}")
    for op in ("put_many", "get_many"):
        for label, pick in (
            ("wall median", lambda xs: statistics.median(x[0] for x in xs)),
            ("wall best", lambda xs: min(x[0] for x in xs)),
            ("CPU median", lambda xs: statistics.median(x[1] for x in xs)),
            ("CPU best", lambda xs: min(x[1] for x in xs)),
        ):
            old: Any = pick(times[(op, "old")]) / BATCH * 1e6
            new: Any = pick(times[(op, "new")]) / BATCH * 1e6
            print(f"{op:<9} {label:<13} {old:>7.1f} {new:>7.1f} {new / old:>8.2f}")


if __name__ == "__main__":
    main()
