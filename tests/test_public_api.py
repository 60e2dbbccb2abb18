"""The public API: ``import bulksend`` gives every name docs/api.md lists, and nothing more.

Each name is the object of the module docs/api.md names as its home; importing bulksend
loads neither click nor the command line (a program that only sends must not pay for them);
and since importing bulksend loads every room, no module imports another in a circle.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bulksend
from bulksend.errors import BulksendError

PACKAGE = Path(bulksend.__file__).parent
API_DOC = Path(__file__).parents[1] / "docs" / "api.md"
_ROW = re.compile(r"^\| `(?P<name>\w+)` \| `(?P<home>bulksend(?:\.\w+)*)` \|")


def documented() -> dict[str, str]:
    """Name -> home module, from the tables of docs/api.md."""
    rows = [_ROW.match(line) for line in API_DOC.read_text(encoding="utf-8").splitlines()]
    names = [(m["name"], m["home"]) for m in rows if m is not None]
    assert len(names) == len(dict(names)), "docs/api.md lists a name twice"
    return dict(names)


DOCUMENTED = documented()


def test_all_is_the_documented_list() -> None:
    assert len(bulksend.__all__) == len(set(bulksend.__all__))
    assert sorted(bulksend.__all__) == sorted(DOCUMENTED)


@pytest.mark.parametrize(("name", "home"), sorted(DOCUMENTED.items()))
def test_each_name_is_importable_and_is_its_homes_object(name: str, home: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from bulksend import {name}", namespace)  # the statement a user writes
    assert namespace[name] is getattr(importlib.import_module(home), name)


def test_every_public_exception_derives_from_the_root() -> None:
    errors = [
        getattr(bulksend, name)
        for name in bulksend.__all__
        if isinstance(getattr(bulksend, name), type)
        and issubclass(getattr(bulksend, name), BaseException)
    ]
    assert len(errors) >= 10
    assert all(issubclass(error, BulksendError) for error in errors)


def test_importing_bulksend_loads_no_command_line() -> None:
    # A fresh interpreter: this one has imported the CLI for other tests already.
    probe = (
        "import sys, bulksend; print(sorted(m for m in sys.modules"
        " if m == 'click' or m.startswith(('click.', 'bulksend.cli'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def _module_graph() -> dict[str, set[str]]:
    """Module -> the bulksend modules it imports when it is loaded (not under TYPE_CHECKING,
    not inside functions): the edges along which a circle would bite."""
    names = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name in names:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        edges: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in names)
            elif isinstance(node, ast.ImportFrom) and node.module in names:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & names
                # ``from package import submodule`` loads the submodule, not a name of the
                # package's own.
                if len(submodules) < len(node.names):
                    edges.add(node.module)
                edges |= submodules
        graph[name] = edges - {name}
    return graph


def test_no_import_circle() -> None:
    graph = _module_graph()
    assert "bulksend.config.loader" in graph["bulksend.config"]
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the circle
