"""dvc.yaml's code deps are exactly each stage's import closure, so a code edit reruns exactly the
stages that run the edited file (the DVC side is exercised in tests/test_dvc_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import read_yaml
from pipeline.provenance import PACKAGES, ROOT, code_fingerprint, import_closure, module_entry


def stage_templates(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """{stage group: its definition} with foreach's ``do`` and YAML merge keys resolved."""
    stages = read_yaml(dvc_yaml)["stages"]
    return {name: (body["do"] if "foreach" in body else body) for name, body in stages.items()}


def code_deps(deps: list) -> set[Path]:
    """The project files a stage's deps cover: files as listed, a folder as all its .py files."""
    covered: set[Path] = set()
    for dep in deps:
        dep = next(iter(dep)) if isinstance(dep, dict) else dep
        if dep.split("/")[0] not in PACKAGES:
            continue
        path = ROOT / dep
        assert path.exists(), f"dvc.yaml lists {dep}, which does not exist"
        if path.is_dir():
            covered |= {p.relative_to(ROOT) for p in path.rglob("*.py") if "__pycache__" not in p.parts}
        else:
            covered.add(Path(dep))
    return covered


def closure_of(command: str, root: Path = ROOT) -> set[Path]:
    """The project files (of the project at ``root``) that a dvc.yaml command runs."""
    words = command.split()
    assert words[:2] == ["python", "-m"], f"a stage command runs `python -m stages.<name>`, got {command!r}"
    return import_closure(module_entry(words[2], root), root)


@pytest.mark.parametrize("group", sorted(stage_templates()))
def test_each_stage_lists_exactly_the_code_it_runs(group: str) -> None:
    stage = stage_templates()[group]
    want, have = closure_of(stage["cmd"]), code_deps(stage["deps"])
    missing, extra = sorted(map(str, want - have)), sorted(map(str, have - want))
    assert not missing and not extra, (
        f"dvc.yaml stage {group!r}: its command can run {missing} but they are not deps (an edit there would "
        f"not rerun it); listed but never run: {extra}. Its code deps should be:\n"
        + "\n".join(f"  - {p}" for p in sorted(map(str, want))))


def test_every_stage_runs_project_code_and_the_groups_share_templates() -> None:
    templates = stage_templates()
    assert {"validate", "download", "train", "embed", "embed_concat", "evaluate", "report"} <= set(templates)
    for group, stage in templates.items():
        assert Path("stages") / f"{stage['cmd'].split()[2].split('.')[-1]}.py" in closure_of(stage["cmd"]), group


# ---------------------------------------------------------------------------- the closure itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


PROJECT = {
    "stages/__init__.py": "",
    "stages/run.py": "import sys\nfrom pipeline.a import f\nfrom pipeline.sub import c\n",
    "pipeline/__init__.py": "",
    "pipeline/a.py": "import numpy\n\ndef f():\n    from pipeline import lazy  # runs only when f is called\n    return lazy\n",
    "pipeline/lazy.py": "from .sub.d import X\n",
    "pipeline/sub/__init__.py": '"""no imports"""\n',
    "pipeline/sub/c.py": "from . import d\n",
    "pipeline/sub/d.py": "X = 1\n",
    "pipeline/sub/e.py": "import pipeline.unused\n",
    "pipeline/unused.py": "",
}


def test_closure_follows_lazy_relative_and_package_imports(tmp_path: Path) -> None:
    root = _write(tmp_path, PROJECT)
    assert import_closure("stages/run.py", root) == {Path(p) for p in (
        "stages/__init__.py", "stages/run.py", "pipeline/__init__.py", "pipeline/a.py", "pipeline/lazy.py",
        "pipeline/sub/__init__.py", "pipeline/sub/c.py", "pipeline/sub/d.py")}


def test_code_fingerprint_changes_with_the_closure_only(tmp_path: Path) -> None:
    root = _write(tmp_path, PROJECT)
    before, files = code_fingerprint("stages/run.py", root)
    assert set(files) == {str(p) for p in import_closure("stages/run.py", root)}
    (root / "pipeline/unused.py").write_text("# not imported by stages/run.py\n")
    assert code_fingerprint("stages/run.py", root)[0] == before
    (root / "pipeline/sub/d.py").write_text("X = 2\n")
    after, changed = code_fingerprint("stages/run.py", root)
    assert after != before and changed["pipeline/sub/d.py"] != files["pipeline/sub/d.py"]
