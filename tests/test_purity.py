"""Every protocol machine module stays sans-IO (DEVELOPERS.md "Sans-IO core").

Machine packages: sansio_smp, agent, xftp, ntf. Their modules may not import networking,
concurrency, process, clock or OS-randomness modules, nor the ``transports`` package. The only
exceptions are the thin program modules that ARCHITECTURE.md names (CLIs and demos), listed in
``PROGRAM_MODULES`` below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MACHINE_PACKAGES = ("sansio_smp", "agent", "xftp", "ntf")
PROGRAM_MODULES = {
    "sansio_smp/cli.py",
    "sansio_smp/server_cli.py",
    "sansio_smp/demo.py",
    "xftp/cli.py",
    "ntf/cli.py",
}
FORBIDDEN_MODULES = {
    "socket",
    "ssl",
    "asyncio",
    "anyio",
    "trio",
    "threading",
    "multiprocessing",
    "subprocess",
    "selectors",
    "random",
    "secrets",
    "time",
    "signal",
    "shutil",
    "transports",
    "urllib.request",
    "http.client",
    "http.server",
}
FORBIDDEN_CALLS = {("os", "urandom"), ("os", "getrandom"), ("datetime", "now"), ("datetime", "utcnow"), ("date", "today")}


def _machine_modules() -> list[Path]:
    out = []
    for pkg in MACHINE_PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if rel not in PROGRAM_MODULES:
                out.append(p)
    return out


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        for name in names:
            if name.split(".")[0] in FORBIDDEN_MODULES or ".".join(name.split(".")[:2]) in FORBIDDEN_MODULES:
                found.append(f"line {node.lineno}: imports {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            base_name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if (base_name, node.func.attr) in FORBIDDEN_CALLS:
                found.append(f"line {node.lineno}: calls {base_name}.{node.func.attr}()")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            found.append(f"line {node.lineno}: opens a file")
    return found


MODULES = _machine_modules()


def test_there_are_machine_modules() -> None:
    assert len(MODULES) >= 8


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_machine_module_is_pure(path: Path) -> None:
    assert _violations(path) == []


def test_checker_catches_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nfrom anyio import sleep\nimport os\nx = os.urandom(3)\nopen('f')\nimport urllib.request\n")
    assert len(_violations(bad)) == 5
