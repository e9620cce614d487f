"""Two processes creating a vault in the same empty directory at the same moment: at
most one wins, and the loser never removes what the winner made (found by an audit: a
losing create deleted the winner's keys.db, leaving a "created" vault without keys)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from shredvault import Vault
from shredvault.vault import generate_keyfile

CREATE = """
import sys, time
from shredvault import Vault, VaultError
start = float(sys.argv[3])
while time.time() < start:  # both children begin together
    pass
try:
    Vault.create(sys.argv[1], keyfile=sys.argv[2]).close()
except VaultError as error:
    print("LOST", type(error).__name__)
else:
    print("WON")
"""


@pytest.mark.parametrize("round_", range(5))
def test_a_losing_create_leaves_the_winners_vault_whole(tmp_path: Path, round_: int) -> None:
    key = tmp_path / "vault.key"
    generate_keyfile(key)
    root = tmp_path / "vault"  # made by the creates themselves, as `init` does
    start = time.time() + 1.5
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, str(root), str(key), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        outcomes.append(out.split()[0])
    assert outcomes.count("WON") <= 1
    if "WON" in outcomes:
        with Vault.open(root, keyfile=key) as vault:  # keys.db and data.db both intact
            assert vault.verify_log().ok
