"""Which project files a stage runs: its import closure, found statically, and their fingerprint.

A stage's outputs are a function of its inputs *and of the code that made them*. DVC can only
rerun a stage when that code changes if dvc.yaml lists it as the stage's deps, and a resumed
training run must not splice epochs of old code onto new. Both rest on one question: which
files of this project can a stage's process execute? :func:`import_closure` answers it from the
source alone (no import is executed): starting at the stage's entry point, every ``import`` and
``from ... import`` anywhere in a file (function bodies included: a lazy import still runs)
that names a module of the project adds that module's file, the ``__init__.py`` of every
package on its way, and recursively what those import.

``tests/test_code_deps.py`` checks dvc.yaml's deps against these closures;
:func:`code_fingerprint` hashes a closure for the train stage's resume checkpoints.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")  # the project's top-level packages


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The file of project module ``module`` ("pipeline.data.cache"), relative to ``root``, or None
    if it is not a module of the project."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root)
    return None


def _with_packages(module: str, root: Path) -> list[Path]:
    """The file of ``module`` and the ``__init__.py`` of every package above it (all imported)."""
    parts = module.split(".")
    found = [module_file(".".join(parts[:i]), root) for i in range(1, len(parts) + 1)]
    return [f for f in found if f is not None]


def _module_name(path: Path) -> str:
    """pipeline/data/cache.py -> pipeline.data.cache; pipeline/data/__init__.py -> pipeline.data."""
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module name an import statement of the file ``root / path`` may load.

    ``from a.b import c`` may load ``a.b`` and, if ``c`` is a submodule, ``a.b.c``: both are
    returned (callers keep the ones that are files of the project).
    """
    tree = ast.parse((root / path).read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import b
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


@lru_cache(maxsize=None)
def _closure(entry: str, root: Path) -> frozenset[Path]:
    start = Path(entry)
    seen: set[Path] = set()
    todo = [start, *_with_packages(_module_name(start), root)[:-1]]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path, root):
            for found in _with_packages(module, root):
                if found not in seen:
                    todo.append(found)
    return frozenset(seen)


def import_closure(entry: str | Path, root: Path = ROOT) -> set[Path]:
    """The project files (relative to ``root``) that running ``entry`` ("stages/train.py") may
    execute: the entry, what it imports, what those import, and so on."""
    return set(_closure(str(Path(entry)), root))


def module_entry(module: str, root: Path = ROOT) -> Path:
    """The file ``python -m <module>`` runs: stages.train -> stages/train.py."""
    found = module_file(module, root)
    if found is None:
        raise ValueError(f"{module!r} is not a module of this project ({', '.join(PACKAGES)})")
    return found


def file_digests(files: Iterable[Path], root: Path = ROOT) -> dict[str, str]:
    """{relative path: sha256 of its bytes}, sorted by path."""
    return {str(f): hashlib.sha256((root / f).read_bytes()).hexdigest() for f in sorted(files)}


def code_fingerprint(entry: str | Path, root: Path = ROOT) -> tuple[str, dict[str, str]]:
    """(one hash of every file in ``entry``'s import closure, the per-file sha256 it was made of)."""
    digests = file_digests(import_closure(entry, root), root)
    blob = "".join(f"{name}\0{digest}\n" for name, digest in digests.items())
    return hashlib.sha256(blob.encode()).hexdigest()[:16], digests
