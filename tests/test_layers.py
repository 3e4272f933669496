"""The import layers of the project: every import points down (or sideways), and no import, lazy
ones included, closes a cycle. A new module fails here until it is given a layer."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from pipeline.provenance import PACKAGES, ROOT, imported_modules, module_file

# Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: list[tuple[str, list[str]]] = [
    ("core: files, names, errors, devices (no project imports above it)", [
        "pipeline/__init__.py", "pipeline/errors.py", "pipeline/formats.py", "pipeline/paths.py",
        "pipeline/io.py", "pipeline/hashing.py", "pipeline/devices.py", "pipeline/provenance.py",
        "pipeline/schema.py", "pipeline/smoke.py", "pipeline/hardware.py"]),
    ("params", ["pipeline/config.py"]),
    ("domain: data, models, losses, evaluation, tracking", [
        "pipeline/data/*", "pipeline/models/*", "pipeline/augment.py", "pipeline/losses.py",
        "pipeline/losses_reference.py", "pipeline/distributed.py", "pipeline/evaluation/*",
        "pipeline/figures.py", "pipeline/tracking.py", "pipeline/intervals.py"]),
    ("engines: training, embedding, tasks, reports", [
        "pipeline/training.py", "pipeline/embeddings.py", "pipeline/tasks.py", "pipeline/reports.py",
        "pipeline/relog.py", "pipeline/suites.py", "pipeline/parallel.py"]),
    ("jobs: what each stage does", ["pipeline/jobs/*", "pipeline/cli.py", "pipeline/ui.py"]),
    ("entry points", ["stages/*"]),
]


def project_files() -> list[Path]:
    return sorted(p.relative_to(ROOT) for d in PACKAGES for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def layer_of(path: Path) -> int:
    found = [i for i, (_, patterns) in enumerate(LAYERS) if any(fnmatch(str(path), p) for p in patterns)]
    assert len(found) == 1, f"{path}: give it exactly one layer in tests/test_layers.py (found {found})"
    return found[0]


def imports() -> dict[Path, set[Path]]:
    """{file: the project files it imports}, lazy imports included."""
    out = {}
    for path in project_files():
        targets = {module_file(m) for m in imported_modules(path)}
        out[path] = {t for t in targets if t is not None and t != path}
    return out


def test_every_import_points_down_or_sideways() -> None:
    upward = [f"{src} ({LAYERS[layer_of(src)][0].split(':')[0]}) imports {dst} "
              f"({LAYERS[layer_of(dst)][0].split(':')[0]})"
              for src, targets in imports().items() for dst in targets if layer_of(dst) > layer_of(src)]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_import_cycle_not_even_through_a_lazy_import() -> None:
    graph = imports()
    state: dict[Path, int] = {}  # 1: on the current path, 2: done

    def visit(node: Path, path: list[Path]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(map(str, cycle)))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    """A lazy import inside a function counts (it runs when the function does)."""
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline/__init__.py").write_text("")
    (tmp_path / "pipeline/a.py").write_text("def f():\n    from pipeline import b\n    return b\n")
    (tmp_path / "pipeline/b.py").write_text("")
    assert {module_file(m, tmp_path) for m in imported_modules(Path("pipeline/a.py"), tmp_path)} >= {
        Path("pipeline/b.py")}
