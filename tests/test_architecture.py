"""The shape of the library (docs/architecture.md), enforced on the source with ast.

* every module of ``vault/`` sits in one layer, and imports only modules of lower
  layers (plus a short, named list of same-layer edges), counting imports inside
  functions and under ``TYPE_CHECKING``; so there is no import cycle;
* no module imports or touches another module's underscore names;
* each security rule has one home: record AEAD only in the sealer, keys-error
  translation only in ``errors.py``, OS locks only in ``locks.py``, file creation only
  in the writer;
* every library module declares ``__all__`` and stays under ~500 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VAULT = ROOT / "vault"

#: layer of every vault module, lowest first (docs/architecture.md draws the same)
LAYERS: dict[str, list[str]] = {
    "leaves": [
        "errors",
        "canonical",
        "clock",
        "ids",
        "faults",
        "layout",
        "files",
        "locks",
        "schema",
        "inputs",
        "access",
        "trust",
        "normalize",
        "dataurl",
    ],
    "ledger": [
        "store",
        "log",
        "checkpoint",
        "entryshape",
        "verify",
        "chain",
        "lifecycle",
        "keycopies",
        "rowauth",
        "blindindex",
        "routine_tables",
    ],
    "proofs": ["receipt", "model", "audit", "certificate", "archive", "package", "markdown"],
    "core": ["context", "actor", "sealing", "tombstone", "keptreceipts", "routine"],
    "operations": [
        "customers",
        "records",
        "principals",
        "kinds",
        "migrate",
        "rowmigrate",
        "storecheck",
        "shred",
        "rotate",
        "cadence",
        "reviews",
        "dek_rotation",
        "backup",
        "handover_export",
        "handover_import",
        "subject_report",
        "search",
        "logins",
        "notices",
    ],
    "workflows": [
        "retention",
        "reconcile",
        "opening",
        "restore",
        "handover_complete",
        "bulk_shred",
        "audit_reports",
        "decommission",
        "requests",
        "drill",
    ],
    "public": ["session", "vault", "desk", "custody"],
    "api": ["__init__"],
}

#: imports between modules of the same layer, each for a reason that keeps it acyclic
SAME_LAYER: dict[tuple[str, str], str] = {
    ("schema", "canonical"): "kinds are stored as canonical JSON",
    ("schema", "errors"): "",
    ("schema", "inputs"): "an undeclared field is named with the closest declared ones",
    ("inputs", "ids"): "",
    ("locks", "errors"): "",
    ("files", "errors"): "the writer's refusal maps through keys_errors",
    ("inputs", "errors"): "",
    ("inputs", "clock"): "the one date parser gives times as the log stores them",
    ("access", "inputs"): "expiries go through the one date parser",
    ("trust", "inputs"): "a signed object's type is read with the one JSON parser",
    ("access", "clock"): "expiries are RFC 3339 times",
    ("access", "errors"): "",
    ("dataurl", "errors"): "",
    ("access", "schema"): "role names follow the name rules",
    ("log", "store"): "the log lives in the data store's tables",
    ("checkpoint", "store"): "",
    ("verify", "checkpoint"): "",
    ("verify", "log"): "",
    ("verify", "entryshape"): "the fast exact test of common entries",
    ("entryshape", "log"): "the one rule for an entry's target column",
    ("chain", "checkpoint"): "",
    ("chain", "log"): "",
    ("chain", "store"): "",
    ("chain", "verify"): "",
    ("lifecycle", "store"): "",
    ("keycopies", "store"): "",
    ("rowauth", "store"): "authenticated rows and the log's target index live in the store",
    ("blindindex", "store"): "blind-index entries live in the store",
    ("schema", "normalize"): "a searchable field names one of the fixed normalizers",
    ("kinds", "search"): "a kind whose searchable fields change has its index rebuilt",
    ("rowauth", "routine_tables"): "the routine's rows are authenticated rows",
    ("routine_tables", "store"): "the routine's tables are in the data store's metadata",
    ("model", "receipt"): "a shred result carries receipts",
    ("audit", "receipt"): "",
    ("certificate", "audit"): "a certificate is checked against a log export",
    ("certificate", "receipt"): "",
    ("archive", "audit"): "",
    ("markdown", "audit"): "",
    ("certificate", "markdown"): "the certificate's page escapes values as reports do",
    ("markdown", "receipt"): "",
    ("actor", "context"): "the gate logs its refusals through the transaction",
    ("sealing", "context"): "",
    ("restore", "opening"): "a restore opens the restored vault to replay shreds",
    ("opening", "reconcile"): "opening reconciles the keystore with the log before serving",
    ("decommission", "bulk_shred"): "a decommission shreds everyone in batches",
    ("vault", "session"): "a Vault hands out Sessions",
    ("session", "desk"): "a Session has the privacy routine's methods",
    ("session", "custody"): "a Session has the key, backup and handover methods",
    ("rotate", "cadence"): "key status warns of overdue drills and reviews",
    ("reviews", "cadence"): "a review reads and records where its routine stands",
    ("drill", "restore"): "a drill is a restore into a temporary copy",
    ("drill", "opening"): "a drill opens the restored copy to check it",
}

MODULE_LAYER = {m: i for i, names in enumerate(LAYERS.values()) for m in names}


def vault_modules() -> list[Path]:
    return sorted(VAULT.glob("*.py"))


def imports_of(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module inside vault, names imported from it, line) for every import of a vault
    module, wherever it is in the file: relative (``from .x``, ``from . import x``,
    ``from ..vault import x``) or absolute (``shredvault.vault.x``)."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            parts = (node.module or "").split(".") if node.module else []
            if node.level == 1:
                inside = parts
            elif node.level == 2 and parts[:1] == ["vault"]:
                inside = parts[1:]
            elif node.level == 0 and parts[:2] == ["shredvault", "vault"]:
                inside = parts[2:]
            else:
                continue
            if inside:
                yield inside[0], names, node.lineno
            else:  # from . import ids / from ..vault import session
                for name in names:
                    yield name, [], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[:2] == ["shredvault", "vault"] and len(parts) > 2:
                    yield parts[2], [], node.lineno


def test_every_vault_module_has_a_layer() -> None:
    found = {p.stem for p in vault_modules()}
    assert found - set(MODULE_LAYER) == set(), "classify new modules in LAYERS"
    assert set(MODULE_LAYER) - found == set(), "LAYERS names a module that is gone"


@pytest.mark.parametrize("path", vault_modules(), ids=lambda p: p.stem)
def test_imports_go_only_down(path: Path) -> None:
    here = path.stem
    wrong = []
    for target, _names, line in imports_of(path):
        if MODULE_LAYER[target] < MODULE_LAYER[here] or (here, target) in SAME_LAYER:
            continue
        wrong.append(f"{here}:{line} imports {target}")
    assert wrong == []


def test_same_layer_edges_stay_inside_one_layer() -> None:
    for a, b in SAME_LAYER:
        assert MODULE_LAYER[a] == MODULE_LAYER[b], (a, b)


def test_no_import_cycle_in_vault() -> None:
    graph = {p.stem: {t for t, _n, _l in imports_of(p)} for p in vault_modules()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


# -- private names -----------------------------------------------------------------------

#: underscore attributes that are public API of the libraries we use
FOREIGN_API = {"_mapping", "_asdict", "_replace", "_fields", "_make", "_exit"}


def own_private_names(tree: ast.Module) -> set[str]:
    """Underscore names the module itself defines (methods, ``self._x`` attributes):
    touching them on another instance of the same class stays inside the module."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in {"self", "cls"}
        ):
            own.add(node.attr)
    return {n for n in own if n.startswith("_")}


def library_modules() -> list[Path]:
    return sorted(
        [
            *VAULT.glob("*.py"),
            *(ROOT / "keys").glob("*.py"),
            *(ROOT / "cli").glob("*.py"),
            *(ROOT / "server").glob("*.py"),
            ROOT / "client.py",
        ]
    )


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_module_touches_another_modules_private_names(path: Path) -> None:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    own = own_private_names(tree)
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    offences.append(f"line {node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.Attribute):
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in FOREIGN_API | own:
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
                continue
            offences.append(f"line {node.lineno}: touches .{attr}")
    assert offences == []


def test_no_library_module_reaches_names_by_string() -> None:
    """``getattr(x, "_private")`` and ``importlib.import_module`` would hide an access or
    an import from the checks above: the library uses neither."""
    offences = []
    for module in library_modules():
        for node in ast.walk(ast.parse(module.read_text("utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = getattr(func, "attr", getattr(func, "id", ""))
            if name == "import_module" or (
                name in {"getattr", "setattr", "hasattr", "delattr"}
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and str(node.args[1].value).startswith("_")
            ):
                offences.append(f"{module.parent.name}/{module.name}:{node.lineno} {name}")
    assert offences == []


def test_the_import_scanner_sees_every_spelling(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from .log import Event\n"
        "from . import ids\n"
        "from ..vault import session\n"
        "from ..keys import KeyRing\n"
        "import shredvault.vault.store\n"
        "def f():\n"
        "    from shredvault.vault.vault import Vault\n"
    )
    assert sorted(t for t, _n, _l in imports_of(probe)) == [
        "ids",
        "log",
        "session",
        "store",
        "vault",
    ]


def test_the_private_name_scanner_sees_imports_and_attributes(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from .session import _envelope\n"
        "def f(vault, self):\n"
        "    vault._keys.forget([])\n"
        "    self._ok = row._mapping\n"
    )
    tree = ast.parse(probe.read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    touched = [
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr.startswith("_")
        and n.attr not in FOREIGN_API
        and not (isinstance(n.value, ast.Name) and n.value.id in {"self", "cls"})
    ]
    assert imported == ["_envelope"] and touched == ["_keys"]


# -- one home per rule -------------------------------------------------------------------


def calls_or_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.add(node.name.split(".")[-1])
    return found


def homes_of(name: str) -> list[str]:
    return sorted(
        f"{p.parent.name}/{p.name}"
        for p in library_modules()
        if p.parent.name in {"vault", "cli", "server"} and name in calls_or_names(p)
    )


def test_record_aad_is_built_only_by_the_sealer() -> None:
    assert homes_of("record_aad_suffix") == ["vault/sealing.py"]


def translators_of(name: str) -> list[str]:
    """Modules with an ``except`` clause naming ``name`` that raises another error
    (suppressing it or turning it into a status is not translating)."""
    found = []
    for path in library_modules():
        if path.parent.name not in {"vault", "cli", "server"}:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                named = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                raises = any(
                    isinstance(n, ast.Raise) and n.exc is not None
                    for stmt in node.body
                    for n in ast.walk(stmt)
                )
                if name in named and raises:
                    found.append(f"{path.parent.name}/{path.name}")
                    break
    return found


#: where a failed decryption means something else than an infrastructure error: a
#: handover package that does not authenticate is tampered with (VerificationError), a
#: record whose key version vanished mid-export means "run it again" (StorageError)
DECRYPTION_MEANS_SOMETHING_ELSE = {
    "vault/handover_export.py",
    "vault/handover_import.py",
    "vault/package.py",
}


#: the vault modules the server may import besides the public API (``from ..vault``):
#: the one JSON and date parsers, and the audit query's time normalizer
SERVER_REACHES_INTO = {"inputs", "audit_reports"}


def test_the_server_calls_the_public_api_and_never_the_gate_itself() -> None:
    """Every request goes through a Session (the gate and the log are the library's):
    the server imports the public API and the input layer, never actor, context or
    the stores."""
    reached = set()
    for path in sorted((ROOT / "server").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                parts = node.module.split(".")
                if parts[0] == "vault" and len(parts) > 1:
                    reached.add(parts[1])
    assert reached <= SERVER_REACHES_INTO


def test_keys_errors_are_translated_only_in_errors_py() -> None:
    for name in ("KeystoreError", "WrongKeyError", "WeakParametersError", "InvalidKeyError"):
        assert translators_of(name) in ([], ["vault/errors.py"]), name
    for name in ("DecryptionError", "UnsupportedFormatError", "OutputExistsError"):
        assert set(translators_of(name)) - {"vault/errors.py"} <= DECRYPTION_MEANS_SOMETHING_ELSE, (
            name
        )


def test_os_locks_are_taken_only_in_keys_locks_py() -> None:
    for name in ("fcntl", "msvcrt", "flock"):
        users = sorted(
            f"{p.parent.name}/{p.name}" for p in library_modules() if name in calls_or_names(p)
        )
        assert users in ([], ["keys/locks.py"]), name


# -- size and surface ----------------------------------------------------------------------


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_library_modules_stay_small(path: Path) -> None:
    assert len(path.read_text("utf-8").splitlines()) <= 520


@pytest.mark.parametrize(
    "path",
    [*vault_modules(), *sorted((ROOT / "server").glob("*.py")), ROOT / "client.py"],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_every_vault_module_declares_all(path: Path) -> None:
    tree = ast.parse(path.read_text("utf-8"))
    names = [
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    ]
    assert "__all__" in names


#: modules that create files themselves, and why
CREATES_FILES = {
    "keys/files.py": "the writer",
    "vault/locks.py": "the shred lock file: empty, 0600, never holds data",
}


def file_creations(path: Path) -> list[str]:
    """Calls in ``path`` that create or write a file by hand."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = getattr(func, "attr", getattr(func, "id", ""))
        owner = getattr(getattr(func, "value", None), "id", "")
        mode = next(
            (a.value for a in node.args[1:2] if isinstance(a, ast.Constant)),
            next(
                (
                    k.value.value
                    for k in node.keywords
                    if k.arg == "mode" and isinstance(k.value, ast.Constant)
                ),
                None,
            ),
        )
        writes_mode = isinstance(mode, str) and any(c in mode for c in "wax+")
        into_handle = any(k.arg == "fileobj" for k in node.keywords)  # the writer's handle
        if (
            name in {"write_text", "write_bytes", "mkstemp"}
            or (name in {"copyfile", "copy", "copy2"} and owner == "shutil")
            or (name == "open" and owner == "os")
            or (name == "open" and owner in {"", "io", "builtins"} and writes_mode)
            or (name == "open" and owner == "tarfile" and writes_mode and not into_handle)
        ):
            found.append(f"{path.parent.name}/{path.name}:{node.lineno} {owner}.{name}")
    return found


def test_files_are_created_only_by_the_writer() -> None:
    offences = [
        hit
        for module in library_modules()
        if f"{module.parent.name}/{module.name}" not in CREATES_FILES
        for hit in file_creations(module)
    ]
    assert offences == []


def test_the_file_creation_scanner_sees_the_usual_ways(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, tarfile\n"
        "def f(p):\n"
        "    p.write_text('x')\n"
        "    open(p, 'wb')\n"
        "    os.open(p, os.O_CREAT)\n"
        "    tarfile.open(p, 'w')\n"
        "    open(p)\n"
    )
    assert len(file_creations(probe)) == 4
