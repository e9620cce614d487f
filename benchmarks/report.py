"""Summarise a pytest-benchmark JSON file: each vault operation against its baselines.

Usage::

    .venv/bin/python benchmarks/report.py bench.json [more.json ...]

With several files (repeated runs), the tables describe the first one and a last table
gives, for every target, its value in each run and their median: on a shared machine
one run can land on either side of a target.

Ratios are ``baseline time / vault time`` (1.0 = as fast as the baseline, 0.5 = twice
as slow), from medians; ``best`` uses each side's fastest round instead, which is less
disturbed by other load on the machine. Targets come from DESIGN.md §10 and the brief.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (op, baseline role) -> least acceptable ratio baseline/vault.
RATIO_TARGETS = {
    ("put_many", "core"): 0.35,
    ("put_many", "floor"): 0.60,
    ("get_many", "floor"): 0.50,
}
CPU_TARGET_US = 12.0  # put_many CPU outside the database per 1 KiB record
VERIFY_GOAL = 800_000  # entries per second
UNLOCK_TARGET_MS = 250.0
ACCESS_TARGET = 0.95  # get_many as operator / allow-list role vs as admin
BASELINE_NAMES = {"core": "Core insert/select", "floor": "floor (DB work, no crypto)"}


@dataclass(frozen=True)
class Result:
    op: str
    role: str
    backend: str
    units: int
    unit: str
    median: float
    best: float
    cpu: list[float]
    extra: dict[str, Any]


def load(path: Path) -> list[Result]:
    raw = json.loads(path.read_text("utf-8"))
    out = []
    for bench in raw["benchmarks"]:
        info = bench.get("extra_info", {})
        if "op" not in info:
            continue
        out.append(
            Result(
                op=info["op"],
                role=info["role"],
                backend=info["backend"],
                units=int(info["units"]),
                unit=info.get("unit", "record"),
                median=float(bench["stats"]["median"]),
                best=float(bench["stats"]["min"]),
                cpu=[float(c) for c in info.get("cpu_s", [])],
                extra=info,
            )
        )
    return out


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def find(results: list[Result], op: str, role: str, backend: str) -> Result | None:
    for r in results:
        if (r.op, r.role, r.backend) == (op, role, backend):
            return r
    return None


def backends(results: list[Result]) -> list[str]:
    return sorted({r.backend for r in results}, key=lambda b: (b != "sqlite", b))


def records_table(results: list[Result]) -> list[str]:
    lines = [
        "## Records: vault vs baselines (ratio = baseline / vault, medians; best = fastest rounds)",
        "",
        "| op | backend | vault ms | µs/record | baseline | baseline ms | ratio | best | target |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for op in ("put", "put_many", "get_many"):
        for backend in backends(results):
            vault = find(results, op, "vault", backend)
            if vault is None:
                continue
            for role in ("core", "floor"):
                base = find(results, op, role, backend)
                if base is None:
                    continue
                ratio = base.median / vault.median
                best = base.best / vault.best
                target = RATIO_TARGETS.get((op, role))
                goal = "—" if target is None else f"≥ {target:.2f} {verdict(ratio >= target)}"
                lines.append(
                    f"| {op} | {backend} | {vault.median * 1e3:.2f} | "
                    f"{vault.median / vault.units * 1e6:.1f} | {BASELINE_NAMES[role]} | "
                    f"{base.median * 1e3:.2f} | {ratio:.2f} | {best:.2f} | {goal} |"
                )
    return lines


def access_table(results: list[Result]) -> list[str]:
    names = {"operator": "operator (token session)", "allow_list": "custom role, field allow-list"}
    lines = [
        "",
        "## Access check: get_many(1,000) as another role vs as admin (ratio = admin / role)",
        "",
        "| backend | role | ms | admin ms | µs/record extra | ratio | best | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for backend in backends(results):
        admin = find(results, "access", "admin", backend)
        if admin is None:
            continue
        for role, name in names.items():
            r = find(results, "access", role, backend)
            if r is None:
                continue
            ratio = admin.median / r.median
            extra = (r.median - admin.median) / r.units * 1e6
            lines.append(
                f"| {backend} | {name} | {r.median * 1e3:.2f} | {admin.median * 1e3:.2f} | "
                f"{extra:.2f} | {ratio:.2f} | {admin.best / r.best:.2f} | "
                f"≥ {ACCESS_TARGET} {verdict(ratio >= ACCESS_TARGET)} |"
            )
    return lines


def cpu_table(results: list[Result]) -> list[str]:
    lines = [
        "",
        "## CPU outside the database per record (process time: vault - floor; medians, "
        "best = fastest rounds)",
        "",
        "| op | backend | vault CPU ms | floor CPU ms | µs/record outside DB | best | target |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for op in ("put_many", "get_many"):
        for backend in backends(results):
            vault = find(results, op, "vault", backend)
            floor = find(results, op, "floor", backend)
            if vault is None or floor is None or not vault.cpu or not floor.cpu:
                continue
            per = (median(vault.cpu) - median(floor.cpu)) / vault.units * 1e6
            best = (min(vault.cpu) - min(floor.cpu)) / vault.units * 1e6
            goal = (
                f"≤ {CPU_TARGET_US:g} {verdict(per <= CPU_TARGET_US)}" if op == "put_many" else "—"
            )
            lines.append(
                f"| {op} | {backend} | {median(vault.cpu) * 1e3:.1f} | "
                f"{median(floor.cpu) * 1e3:.1f} | {per:.1f} | {best:.1f} | {goal} |"
            )
    return lines


def verify_table(results: list[Result]) -> list[str]:
    names = {
        "vault": "Vault.verify_log",
        "read": "read rows only (iter_entries)",
        "sha256": "raw SHA-256, bytes in memory",
    }
    lines = [
        "",
        "## Chain verification (entries/s, medians)",
        "",
        "| backend | what | entries | ms | entries/s | µs/entry | goal |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for backend in backends(results):
        for role, name in names.items():
            r = find(results, "verify", role, backend)
            if r is None:
                continue
            rate = r.units / r.median
            goal = f"≥ 0.8 M/s {verdict(rate >= VERIFY_GOAL)}" if role == "vault" else "—"
            lines.append(
                f"| {backend} | {name} | {r.units} | {r.median * 1e3:.0f} | {rate:,.0f} | "
                f"{r.median / r.units * 1e6:.2f} | {goal} |"
            )
    return lines


def unlock_table(results: list[Result]) -> list[str]:
    names = {
        "vault": "Vault.open, passphrase, floor KDF",
        "vault_recommended": "Vault.open, passphrase, recommended KDF",
        "argon2id": "Argon2id alone, floor",
        "keyfile": "Vault.open, keyfile (no KDF)",
    }
    lines = [
        "",
        "## Unlock (ms)",
        "",
        "| what | KDF (t, m KiB, p) | median ms | best ms | target |",
        "|---|---|---:|---:|---|",
    ]
    for role, name in names.items():
        r = find(results, "unlock", role, "sqlite")
        if r is None:
            continue
        kdf = r.extra.get("kdf")
        params = f"{kdf['t']}, {kdf['m']}, {kdf['p']}" if kdf else "—"
        ms = r.median * 1e3
        goal = (
            f"≤ {UNLOCK_TARGET_MS:g} {verdict(ms <= UNLOCK_TARGET_MS)}" if role == "vault" else "—"
        )
        lines.append(f"| {name} | {params} | {ms:.0f} | {r.best * 1e3:.0f} | {goal} |")
    return lines


def export_table(results: list[Result]) -> list[str]:
    names = {
        "export": "Auditor.export",
        "verify_export": "verify_export (strict, default)",
        "verify_export_fast": "verify_export (strict=False)",
    }
    lines = [
        "",
        "## Export and offline verification",
        "",
        "| backend | what | entries | s | entries/s |",
        "|---|---|---:|---:|---:|",
    ]
    for backend in backends(results):
        for role, name in names.items():
            r = find(results, "export", role, backend)
            if r is not None:
                lines.append(
                    f"| {backend} | {name} | {r.units} | {r.median:.2f} | "
                    f"{r.units / r.median:,.0f} |"
                )
    lines += [
        "",
        "Peak memory in a fresh process (peak RSS - RSS after imports, MiB):",
        "",
        "| backend | what | last quarter of the log | whole log | flat? |",
        "|---|---|---:|---:|---|",
    ]
    for backend in backends(results):
        r = find(results, "export", "memory", backend)
        if r is None:
            continue
        probes = r.extra["probes"]
        for what in ("export", "verify"):
            if f"{what}_full" not in probes:
                continue
            q, f = probes[f"{what}_quarter"], probes[f"{what}_full"]
            dq = (q["rss_peak_kib"] - q["rss_start_kib"]) / 1024
            df = (f["rss_peak_kib"] - f["rss_start_kib"]) / 1024
            lines.append(
                f"| {backend} | {what} | {dq:.1f} ({q['entries']} entries) | "
                f"{df:.1f} ({f['entries']} entries) | {'yes' if df - dq < 16 else 'NO'} "
                f"(peak RSS {f['rss_peak_kib'] / 1024:.0f} MiB) |"
            )
    return lines


def reconcile_table(results: list[Result]) -> list[str]:
    """Opening with reconciliation next to the same open without it, and what a keystore
    without a mark costs (the whole log verified and scanned once)."""
    ops = sorted(
        {r.op for r in results if r.op.startswith("reconcile_")},
        key=lambda op: int(op.split("_")[1]),
    )
    if not ops:
        return []
    lines = [
        "",
        "## Reconciliation at open (ms, medians; ratio = baseline / vault)",
        "",
        "| backend | customers | log entries | open | open without reconciliation | ratio | "
        "open, whole log rescanned | verify whole log | read whole log | rescan / read | "
        "repair (customers) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for backend in backends(results):
        for op in ops:
            vault = find(results, op, "vault", backend)
            if vault is None:
                continue
            got = {
                role: find(results, op, role, backend)
                for role in ("no_reconcile", "rescan", "verify", "read", "repair")
            }

            def ms(r: Result | None) -> str:
                return "—" if r is None else f"{r.median * 1e3:.1f}"

            base, rescan, read, repair = (
                got["no_reconcile"],
                got["rescan"],
                got["read"],
                got["repair"],
            )
            ratio = "—" if base is None else f"{base.median / vault.median:.2f}"
            per_read = (
                "—" if rescan is None or read is None else f"{rescan.median / read.median:.2f}x"
            )
            fixed = (
                "—"
                if repair is None
                else f"{repair.median * 1e3:.0f} ({repair.extra.get('repaired', '?')})"
            )
            lines.append(
                f"| {backend} | {vault.extra.get('customers')} | {vault.extra.get('entries')} | "
                f"{ms(vault)} | {ms(base)} | {ratio} | {ms(rescan)} | {ms(got['verify'])} | "
                f"{ms(read)} | {per_read} | {fixed} |"
            )
    return lines


def keys_table(results: list[Result]) -> list[str]:
    lines = [
        "",
        "## Shredding and key rotation",
        "",
        "| backend | what | median | vs baseline | goal |",
        "|---|---|---:|---|---|",
    ]
    for backend in backends(results):
        lines += _keys_rows(results, backend)
    return lines


def _keys_rows(results: list[Result], backend: str) -> list[str]:
    rows = []
    shred = find(results, "shred", "vault", backend)
    small = find(results, "shred", "vault_small", backend)
    delete = find(results, "shred", "delete", backend)
    if shred is not None:
        ratio = delete.median / shred.median if delete is not None else 0.0
        goal = f"≤ 1 ms {verdict(shred.median <= 1e-3)}; ≥ 50x {verdict(ratio >= 50)}"
        rows.append(
            f"| {backend} | shred, 1,000 records | {shred.median * 1e3:.1f} ms | "
            f"{ratio:.1f}x the row delete's speed | {goal} |"
        )
        if small is not None:
            rows.append(
                f"| {backend} | shred, 10 records | {small.median * 1e3:.1f} ms | "
                f"1,000-record shred takes {shred.median / small.median:.2f}x (flat: O(1)) | — |"
            )
    if delete is not None:
        rows.append(f"| {backend} | delete 1,000 rows | {delete.median * 1e3:.1f} ms | — | — |")
    expired = find(results, "shred_expired", "vault", backend)
    if expired is not None:
        rate = expired.units / expired.median
        rows.append(f"| {backend} | shred --expired | {rate:,.0f} customers/s | — | — |")
    kek = find(results, "rotate_kek", "vault", backend)
    if kek is not None:
        rate = kek.units / kek.median
        rows.append(
            f"| {backend} | rotate-kek re-wrap | {rate:,.0f} DEKs/s | — | "
            f"≥ 20,000/s {verdict(rate >= 20_000)} |"
        )
    dek = find(results, "rotate_dek", "vault", backend)
    put = find(results, "rotate_dek", "put_many", backend)
    if dek is not None:
        vs = f"{put.median / dek.median:.2f}x put_many's speed" if put is not None else "—"
        rows.append(
            f"| {backend} | rotate-dek, 1,000 records | "
            f"{dek.median / dek.units * 1e6:.1f} µs/record | {vs} | — |"
        )
    return rows


def targets(results: list[Result]) -> dict[str, tuple[float, str, float]]:
    """Every targeted figure in one run: name -> (value, comparison, target)."""
    out: dict[str, tuple[float, str, float]] = {}
    for backend in backends(results):
        for (op, role), target in RATIO_TARGETS.items():
            vault, base = find(results, op, "vault", backend), find(results, op, role, backend)
            if vault is not None and base is not None:
                out[f"{op} vs {role} ratio [{backend}]"] = (
                    base.median / vault.median,
                    ">=",
                    target,
                )
        vault = find(results, "put_many", "vault", backend)
        floor = find(results, "put_many", "floor", backend)
        if vault is not None and floor is not None and vault.cpu and floor.cpu:
            per = (median(vault.cpu) - median(floor.cpu)) / vault.units * 1e6
            out[f"put_many CPU µs/record outside DB [{backend}]"] = (per, "<=", CPU_TARGET_US)
        verify = find(results, "verify", "vault", backend)
        if verify is not None:
            rate = verify.units / verify.median
            out[f"verify_log entries/s [{backend}]"] = (rate, ">=", float(VERIFY_GOAL))
    unlock = find(results, "unlock", "vault", "sqlite")
    if unlock is not None:
        out["unlock ms at the KDF floor"] = (unlock.median * 1e3, "<=", UNLOCK_TARGET_MS)
    return out


def spread_table(runs: list[list[Result]]) -> list[str]:
    per_run = [targets(results) for results in runs]
    header = " | ".join(f"run {i + 1}" for i in range(len(runs)))
    lines = [
        "",
        f"## Targets across {len(runs)} runs (each run's median; then their median)",
        "",
        f"| figure | target | {header} | median | verdict |",
        "|---|---|" + "---:|" * len(runs) + "---:|---|",
    ]
    for name in per_run[0]:
        values = [run[name][0] for run in per_run if name in run]
        _, comparison, goal = per_run[0][name]
        mid = median(values)
        ok = mid >= goal if comparison == ">=" else mid <= goal
        fmt = "{:,.0f}" if goal >= 100 else "{:.2f}"
        cells = " | ".join(fmt.format(run[name][0]) if name in run else "—" for run in per_run)
        lines.append(
            f"| {name} | {comparison.replace('>=', '≥').replace('<=', '≤')} "
            f"{fmt.format(goal)} | {cells} | {fmt.format(mid)} | {verdict(ok)} |"
        )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    runs = [load(Path(arg)) for arg in argv[1:]]
    if not all(runs):
        print("no labelled benchmarks in a file (was the suite run with --benchmark-enable?)")
        return 1
    results = runs[0]
    lines = (
        records_table(results)
        + cpu_table(results)
        + access_table(results)
        + verify_table(results)
        + unlock_table(results)
        + export_table(results)
        + keys_table(results)
        + reconcile_table(results)
    )
    if len(runs) > 1:
        lines += spread_table(runs)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
