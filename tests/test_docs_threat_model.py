"""docs/threat-model.md points every claim at a test: each `file::test` it names exists,
so the table cannot silently cite a test that was renamed or removed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "threat-model.md"


def test_every_test_the_threat_model_cites_exists() -> None:
    cited = set(re.findall(r"(test_\w+\.py)::(test_\w+)", DOC.read_text("utf-8")))
    assert len(cited) > 50
    missing = sorted(
        f"{file}::{name}"
        for file, name in cited
        if not (ROOT / "tests" / file).is_file()
        or not re.search(
            rf"^def {name}\(", (ROOT / "tests" / file).read_text("utf-8"), flags=re.MULTILINE
        )
    )
    assert missing == []
