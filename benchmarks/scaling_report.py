"""Markdown tables of the scaling curves from pytest-benchmark JSON files, one run per
size (``SHREDVAULT_BENCH_CUSTOMERS``): ``python benchmarks/scaling_report.py a.json
b.json ...``. Each row: the operation at N, the same at the run's reference size, and
their ratio (N's median / the reference's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPS = {
    "scale_open": ("Vault.open (keyfile)", "ms", 1000.0),
    "scale_shred_expired": ("shred --expired, per customer", "ms", 1000.0),
    "scale_rotate_dek": ("rotate-dek --all", "customers/min", None),
    "scale_add": ("add_customers, 1,000", "customers/s", None),
}


def rows(paths: list[str]) -> list[str]:
    out = [
        "| operation | N | at N | at 100 (same run) | N / 100 |",
        "|---|---:|---:|---:|---:|",
    ]
    runs = [json.loads(Path(p).read_text())["benchmarks"] for p in paths]
    for op, (label, unit, scale) in OPS.items():
        for benches in runs:
            by_role: dict[str, Any] = {
                b["extra_info"]["role"]: b for b in benches if b["extra_info"].get("op") == op
            }
            if "vault" not in by_role or "reference" not in by_role:
                continue
            n = by_role["vault"]["extra_info"]["customers"]
            values = []
            for role in ("vault", "reference"):
                b = by_role[role]
                median = b["stats"]["median"]
                units = b["extra_info"]["units"]
                if scale is not None:
                    values.append(median / units * scale)
                elif unit == "customers/min":
                    values.append(units / median * 60)
                else:
                    values.append(units / median)
            out.append(
                f"| {label} ({unit}) | {n:,} | {values[0]:,.1f} | {values[1]:,.1f} | "
                f"{values[0] / values[1]:.2f} |"
            )
    for benches in runs:
        adds = {
            b["extra_info"]["role"]: b["extra_info"]["units"] / b["stats"]["median"]
            for b in benches
            if b["extra_info"].get("op") == "scale_add"
        }
        if "vault" in adds and "one_by_one" in adds:
            n = next(b for b in benches if b["extra_info"].get("op") == "scale_add")
            out.append(
                f"| add_customer one by one (customers/s) | {n['extra_info']['customers']:,} | "
                f"{adds['one_by_one']:,.1f} | — | "
                f"batches {adds['vault'] / adds['one_by_one']:.1f}x |"
            )
    return out


if __name__ == "__main__":
    print("\n".join(rows(sys.argv[1:])))
