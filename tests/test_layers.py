"""The frame path's layers depend on each other one way: store -> exporter -> shm -> rendition.

The rendition vocabulary, the segments and the exporter must never import the store (not even
under TYPE_CHECKING, where a cycle hides until someone moves an import out of it), so the
store's circle of imports cannot come back. Checked twice: statically over the source (every
import statement, wherever it sits), and by importing each module alone in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import framebus

PACKAGE = Path(framebus.__file__).resolve().parent

# module -> framebus modules it must not import, directly or (at run time) through others
LOWER_LAYERS = {
    "framebus.rendition": {"framebus.store", "framebus.exporter", "framebus.shm",
                           "framebus.fanout", "framebus.sending"},
    "framebus.shm": {"framebus.store", "framebus.exporter", "framebus.fanout",
                     "framebus.sending"},
    "framebus.exporter": {"framebus.store", "framebus.fanout", "framebus.sending"},
}


def imported_modules(source: str) -> set[str]:
    """Every framebus module named by an import statement in a framebus module's ``source``
    (also inside ``if TYPE_CHECKING:`` and functions), absolute or relative."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # "from . import store", "from .store import X"
                base = ".".join(["framebus", *filter(None, [base])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # from framebus import x
    return {name for name in found if name == "framebus" or name.startswith("framebus.")}


def source_of(module: str) -> str:
    """The text of a framebus module."""
    return (PACKAGE / f"{module.removeprefix('framebus.')}.py").read_text()


@pytest.mark.parametrize("module", sorted(LOWER_LAYERS))
def test_source_never_names_a_higher_layer(module: str) -> None:
    named = imported_modules(source_of(module))
    assert not named & LOWER_LAYERS[module], sorted(named)


@pytest.mark.parametrize("module", sorted(LOWER_LAYERS))
def test_importing_alone_loads_no_higher_layer(module: str) -> None:
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('framebus'))))")
    result = subprocess.run([sys.executable, "-c", code, module], capture_output=True,
                            text=True, timeout=60, check=True)
    loaded = set(json.loads(result.stdout))
    assert not loaded & LOWER_LAYERS[module], sorted(loaded)


def test_the_store_still_offers_the_rendition_names() -> None:
    """Callers that import the vocabulary from the store get the very same objects."""
    from framebus import rendition, store

    for name in ("Rendition", "Payload", "render", "AV_FORMAT", "DEFAULT_QUALITY",
                 "ON_DEMAND_KEPT"):
        assert getattr(store, name) is getattr(rendition, name), name


def test_the_checker_sees_every_form_of_import() -> None:
    """The static check is not blind to the form the old cycle had, nor to relative imports."""
    forms = {
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from framebus.store import Payload\n": "framebus.store",
        "from . import store\n": "framebus.store",
        "from .store import Payload\n": "framebus.store",
        "import framebus.store as s\n": "framebus.store",
        "from framebus import store\n": "framebus.store",
        "def f():\n    from framebus.store import render\n": "framebus.store",
    }
    for source, module in forms.items():
        assert module in imported_modules(source), source
    assert "framebus.store" not in imported_modules("from framebus.rendition import Payload\n")
