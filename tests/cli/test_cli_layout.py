"""The command line is a thin face: it imports the rooms, and they do not import it (issue 15)."""

from __future__ import annotations

import ast
from pathlib import Path

import bulksend

PACKAGE = Path(bulksend.__file__).parent


def _imported(path: Path) -> set[str]:
    """The modules ``path`` imports (absolute names; relative imports are not used here)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


def test_the_cli_does_no_dns_of_its_own() -> None:
    cli = sorted((PACKAGE / "cli").glob("*.py"))
    assert cli, "bulksend/cli/ has modules"
    for path in cli:
        dns = sorted(n for n in _imported(path) if n == "dns" or n.startswith("dns."))
        assert not dns, f"{path.name} imports {dns}: DNS checks belong in a room, not the CLI"


def test_nothing_but_the_entry_point_imports_the_cli() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE / "cli" or path == PACKAGE / "__main__.py":
            continue
        cli = sorted(
            n for n in _imported(path) if n == "bulksend.cli" or n.startswith("bulksend.cli.")
        )
        assert not cli, f"{path.relative_to(PACKAGE)} imports {cli}"
