"""Draw shred latency against keystore size from a pytest-benchmark JSON file.

Usage (matplotlib comes with the ``bench`` extra)::

    .venv/bin/pytest benchmarks/test_bench_shred_scaling.py --benchmark-enable \
        --benchmark-json=shred.json -p no:cacheprovider
    .venv/bin/python benchmarks/plot_shred_scaling.py shred.json benchmarks/shred_scaling.png

Prints the medians (ms) per size and role, and the ratios the README reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROLES = {
    "vault": "shred (keys erased in place)",
    "rebuild": "shred with a keystore rebuild, as before",
    "delete": "plain SQL delete of the same rows (floor)",
}


def medians(path: Path) -> dict[str, dict[int, float]]:
    """role -> keystore size -> median seconds."""
    out: dict[str, dict[int, float]] = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        extra = bench.get("extra_info", {})
        op = str(extra.get("op", ""))
        if not op.startswith("shred_n"):
            continue
        size = int(op.removeprefix("shred_n"))
        out.setdefault(str(extra["role"]), {})[size] = float(bench["stats"]["median"])
    return out


def main(source: Path, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = medians(source)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for role, label in ROLES.items():
        points = sorted(found.get(role, {}).items())
        if points:
            ax.plot([n for n, _ in points], [t * 1000 for _, t in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("customers in the keystore")
    ax.set_ylabel("median latency (ms)")
    ax.set_title("Shred of a one-record customer, SQLite")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    sizes = sorted({n for points in found.values() for n in points})
    print("N | " + " | ".join(ROLES))
    for n in sizes:
        row = [found.get(role, {}).get(n) for role in ROLES]
        print(f"{n} | " + " | ".join("-" if t is None else f"{t * 1000:.1f} ms" for t in row))
    vault = found.get("vault", {})
    if vault and min(sizes) in vault and max(sizes) in vault:
        big, small = max(sizes), min(sizes)
        print(f"median at {big} / at {small}: {vault[big] / vault[small]:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
