"""Peak memory of a log export or an offline export verification, in a fresh process.

Usage (from the repository root)::

    python benchmarks/memory_probe.py export VAULT_DIR OUT_FILE [--since N] [--url URL]
    python benchmarks/memory_probe.py verify EXPORT_FILE

Prints one JSON object: ``rss_start_kib`` (resident memory after imports, before the
work), ``rss_peak_kib`` (the high-water mark after it), ``entries`` and ``seconds``.
Streaming code shows the same peak whatever the log's length.

The peak is ``VmHWM`` from ``/proc/self/status``, not ``getrusage().ru_maxrss``: Linux
carries ``ru_maxrss`` over ``execve`` from the forking parent, so a child of a big
pytest process would report the parent's peak.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shredvault.vault import Auditor, verify_export


def memory_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op", choices=["export", "verify"])
    parser.add_argument("path")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--since", type=int, default=1)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()

    start = memory_kib("VmRSS")
    began = time.perf_counter()
    if args.op == "export":
        with Auditor.open(args.path, data_url=args.url) as auditor, open(args.out, "wb") as out:
            entries = auditor.export(out, since=args.since)
    else:
        report = verify_export(args.path)
        if not report.ok:
            raise SystemExit(f"export does not verify: {report.message}")
        entries = report.entries
    print(
        json.dumps(
            {
                "rss_start_kib": start,
                "rss_peak_kib": memory_kib("VmHWM"),
                "entries": entries,
                "seconds": time.perf_counter() - began,
            }
        )
    )


if __name__ == "__main__":
    main()
