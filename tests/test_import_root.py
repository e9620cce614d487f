"""One import root (DESIGN §1, issue 15): the wheel installs only ``shredvault``, and an
application with its own ``keys``, ``vault`` and ``cli`` modules on ``PYTHONPATH``, next
to another installed distribution that owns a top-level ``keys`` package, gets ours from
``shredvault`` and keeps its own.

A real throwaway venv gets the project as a wheel, built once per session with this venv's
own pip and setuptools (no build isolation, no index: nothing is downloaded). The
dependencies come from this venv's site-packages through a ``.pth`` file; its .pth files
are not run from there, so the editable install of the repository stays invisible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from processes import REPO

# The app's modules shadow ours by name. Were shredvault to import any of them, or the
# other distribution's `keys`, the names it needs would be missing or wrong.
APP_MODULES = {
    "keys.py": 'WHO = "app"\ngenerate_keyfile = KeysError = None\n',
    "vault.py": 'WHO = "app"\nVault = VaultError = None\n',
    "cli.py": 'WHO = "app"\nmain = cli = None\n',
}
OTHER_DIST = "otherkeys"  # another installed distribution with a top-level `keys`
SHADOWED = ("keys", "vault", "cli")


@dataclass(frozen=True)
class Installed:
    python: Path
    script: Path  # the `shredvault` console script
    site_packages: Path
    app: Path  # the application's folder: its own keys.py, vault.py, cli.py


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per test session from a copy of the sources (an
    in-tree build would leave build/ behind, and stale files there get packaged)."""
    source = tmp_path_factory.mktemp("source") / "shredvault"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
            ".benchmarks", "*.db", "*.db-*",
        ),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("wheel")
    run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "--wheel-dir", str(out), str(source),
    )  # fmt: skip
    (built,) = out.glob("shredvault-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh venv holding our wheel and another distribution's ``keys`` package, and an
    application folder beside it."""
    base = tmp_path_factory.mktemp("import-root")
    env_dir = base / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(env_dir))
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    run(
        sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
        "--no-deps", "--no-index", str(wheel),
    )  # fmt: skip
    site_packages = Path(
        run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    )
    # Dependencies (cryptography, click, ...) from this venv, after the new venv's own.
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site_packages / "_shredvault_test_deps.pth").write_text("\n".join([*ours, ""]), "utf-8")
    install_other_distribution(site_packages)
    app = base / "app"
    app.mkdir()
    for name, text in APP_MODULES.items():
        (app / name).write_text(text, encoding="utf-8")
    return Installed(python, bin_dir / "shredvault", site_packages, app)


def install_other_distribution(site_packages: Path) -> None:
    """What pip leaves for a distribution whose only package is a top-level ``keys``."""
    package = site_packages / "keys"
    package.mkdir()
    (package / "__init__.py").write_text(f'WHO = "{OTHER_DIST}"\n', encoding="utf-8")
    info = site_packages / f"{OTHER_DIST}-1.0.dist-info"
    info.mkdir()
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: {OTHER_DIST}\nVersion: 1.0\n",
        "top_level.txt": "keys\n",
        "INSTALLER": "test\n",
    }
    for name, text in files.items():
        (info / name).write_text(text, encoding="utf-8")
    record = ["keys/__init__.py,,", *(f"{info.name}/{n},," for n in files), f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n", encoding="utf-8")


def run(*command: str, cwd: Path | None = None, app_path: bool = False) -> str:
    """Run a command with a clean environment (PYTHONPATH=. when ``app_path``); its
    stdout, or the test fails with its stderr."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "SHREDVAULT_")) and k != "VIRTUAL_ENV"
    }
    env["PYTHONNOUSERSITE"] = "1"
    if app_path:
        env["PYTHONPATH"] = "."
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


def python_in_app(installed: Installed, code: str) -> list[str]:
    """Run ``code`` with the venv's python in the app folder, PYTHONPATH=.; its lines."""
    script = textwrap.dedent(code)
    return run(str(installed.python), "-c", script, cwd=installed.app, app_path=True).split()


def test_the_wheel_installs_only_the_shredvault_import_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        top_level = archive.read(f"{info}/top_level.txt").decode().split()
        record = archive.read(f"{info}/RECORD").decode().splitlines()
    assert top_level == ["shredvault"]
    recorded_roots = {line.split(",")[0].split("/")[0] for line in record if line}
    assert recorded_roots == {"shredvault", info}
    assert {n.split("/")[0] for n in names} == {"shredvault", info}
    assert {
        "shredvault/keys/",
        "shredvault/vault/",
        "shredvault/cli/",
        "shredvault/server/",
    } <= {n.rsplit("/", 1)[0] + "/" for n in names}
    assert "shredvault/client.py" in names


def test_the_app_gets_the_api_from_shredvault_and_imports_none_of_its_modules(
    installed: Installed,
) -> None:
    out = python_in_app(
        installed,
        """
        import sys
        from shredvault import Vault, VaultError
        import shredvault.keys, shredvault.cli.main
        print(Vault.__module__, VaultError.__module__, shredvault.keys.__name__)
        print(shredvault.__file__)
        print(*sorted(set(sys.modules) & {"keys", "vault", "cli"}) or ["none"])
        """,
    )
    assert out[:3] == ["shredvault.vault.vault", "shredvault.vault.errors", "shredvault.keys"]
    assert Path(out[3]).resolve().parent == (installed.site_packages / "shredvault").resolve()
    assert out[4:] == ["none"]


def test_the_apps_own_modules_stay_its_own_after_importing_shredvault(
    installed: Installed,
) -> None:
    out = python_in_app(
        installed,
        """
        import shredvault, shredvault.cli.main
        import keys, vault, cli
        print(keys.WHO, vault.WHO, cli.WHO)
        """,
    )
    assert out == ["app", "app", "app"]


def test_another_distributions_keys_package_neither_breaks_us_nor_is_touched(
    installed: Installed, tmp_path: Path
) -> None:
    code = (
        "import sys, shredvault, shredvault.cli.main\n"
        "assert 'keys' not in sys.modules\n"
        "import keys, importlib.metadata as m\n"
        "print(keys.WHO, *m.packages_distributions()['keys'])\n"
    )
    out = run(str(installed.python), "-c", code, cwd=tmp_path).split()
    assert out == [OTHER_DIST, OTHER_DIST]


def test_python_m_shredvault_prints_the_version(installed: Installed) -> None:
    out = run(
        str(installed.python), "-m", "shredvault", "--version", cwd=installed.app, app_path=True
    )
    assert out.strip() == f"shredvault, version {version('shredvault')}"


def test_the_installed_console_script_runs_the_demo(installed: Installed) -> None:
    out = run(str(installed.script), "demo", cwd=installed.app, app_path=True)
    assert "verified the export offline" in out
