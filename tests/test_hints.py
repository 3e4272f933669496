"""Every command the project prints as a hint runs as printed.

:func:`scan_hints` reads the source of ``pipeline/**/*.py`` and ``stages/*.py`` and lists each
command a user is told to run, as ``(file, line, command)``:

* in every string the code can print (every string literal and f-string except docstrings): a
  backticked span that starts with ``python -m stages.`` or ``dvc ``, and an unquoted
  ``python -m stages.<name> ...`` up to the next ``)``, ``;``, ``,``, quote, backtick, newline or
  sentence end (an unquoted command followed by more prose is read as part of the command, and
  fails here: put it in backticks);
* in the module docstring of ``stages/*.py`` (the ``--help`` text): each indented usage line
  ``python -m stages.<name> ...``, run with every ``[optional]`` part given.

A new hint is picked up automatically. Placeholders (``{dataset}``, ``NAME``, ``D``, ...) are
replaced by real names of a tiny project (:data:`PLACEHOLDERS`); an unknown one fails the scan
test, so a new kind of placeholder gets a value here. Each distinct command then runs, as
printed, in a scratch copy of the project (with the digits cache prepared, the project
committed to git and a sqlite MLflow store) and must exit 0, except the few in
:data:`EXPECTED_FAILURES`, which must fail with one ``error:`` line and no traceback. A bare
``dvc repro`` runs as ``dvc repro download@digits`` (the whole tiny pipeline would take minutes).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import ROOT, copy_project, tiny_params

pytestmark = pytest.mark.slow  # real subprocesses (make test-fast skips these)

DATASET, METHOD, SEED = "digits", "supcon", "0"
CHEAP_STAGE = f"download@{DATASET}"  # the stage a hint's `dvc repro [STAGE]` runs here
EXPERIMENT = "no-such-exp"

# Placeholder -> value in the scratch project: whole words of a usage line, and {expressions} of
# f-strings (by their source text).
WORDS = {"NAME": DATASET, "D": DATASET, "M": METHOD, "S": SEED, "KEY=VALUE": "suite.seeds=[0]", "N": "1"}
FIELDS = {
    "dataset": DATASET, "name": DATASET, "args.dataset": DATASET, "item": DATASET,
    "method": METHOD, "args.method": METHOD, "seed": SEED, "args.seed": SEED,
    "stage": CHEAP_STAGE, "stage_name": CHEAP_STAGE,
}
PLACEHOLDERS = {**WORDS, **{f"{{{k}}}": v for k, v in FIELDS.items()}}

# Commands (after substitution) that must fail in the scratch project's state: (why, what the
# one error line must match).
EXPECTED_FAILURES = {
    "python -m stages.download --dataset cifar10 --no-download --timeout 30": (
        "the usage example of --help: no CIFAR-10 files under data/raw, and no download allowed",
        r"^error: .*cifar10.*data_batch_1"),
    f"dvc exp apply {EXPERIMENT}": (
        "printed after a suite run; the scratch project has run no experiment",
        rf"^ERROR: .*'{EXPERIMENT}'"),
}

COMMAND = r"(?:python -m stages\.\w+|dvc [a-z])"
BACKTICKED = re.compile(r"(`+)(.+?)\1", re.S)
PLAIN = re.compile(r"python -m stages\.\w+[^\n`'\";),]*")
USAGE = re.compile(r"^[ \t]+(python -m stages\.\w+.*)$", re.M)


class Hint(NamedTuple):
    file: str  # relative to the repository root
    line: int
    command: str  # as written, placeholders and all

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.command}"


def _text(node: ast.expr) -> str:
    """A string literal's value; an f-string with each ``{expr}`` kept as its source text."""
    if isinstance(node, ast.Constant):
        return node.value
    return "".join(v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
                   for v in node.values)


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                  ast.ClassDef)))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
            and isinstance(n.body[0].value.value, str)}


def commands_in(text: str) -> list[str]:
    """The commands a printed string tells the user to run (see the module docstring)."""
    found = [m.group(2).strip() for m in BACKTICKED.finditer(text) if re.match(COMMAND, m.group(2).strip())]
    rest = BACKTICKED.sub(lambda m: " " * len(m.group(0)), text)
    for m in PLAIN.finditer(rest):
        found.append(re.split(r"\.(?:\s|$)", m.group(0))[0].strip())
    return found


def scan_hints(root: Path = ROOT) -> list[Hint]:
    """Every hint command in ``root``'s pipeline/**/*.py and stages/*.py, as (file, line, command)."""
    files = sorted((root / "pipeline").rglob("*.py")) + sorted((root / "stages").glob("*.py"))
    hints = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        docstrings = _docstrings(tree)
        inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if id(node) in inner or not (isinstance(node, ast.JoinedStr) or (
                    isinstance(node, ast.Constant) and isinstance(node.value, str))):
                continue
            text = _text(node)
            if id(node) in docstrings:
                if node is tree.body[0].value and path.parent.name == "stages":  # printed by --help
                    hints += [Hint(rel, node.lineno + text.count("\n", 0, m.start()), m.group(1).strip())
                              for m in USAGE.finditer(text)]
                continue
            hints += [Hint(rel, node.lineno, c) for c in commands_in(text)]
    return sorted(set(hints), key=lambda h: (h.file, h.line, h.command))


def concrete(command: str) -> str:
    """``command`` with optional parts given and placeholders replaced; KeyError on an unknown one."""
    command = re.sub(r"\[([^\[\]]*)\]", r"\1", command).replace(" ...", "")
    words = shlex.split(command)
    if words[:2] == ["dvc", "repro"] and len(words) == 2:
        words.append(CHEAP_STAGE)
    if words[:3] == ["dvc", "exp", "apply"]:
        words = [EXPERIMENT if w == "NAME" else w for w in words]
    words = [WORDS.get(w, w) for w in words]
    out = []
    for w in words:
        for field in re.findall(r"\{([^{}]*)\}", w):
            if field not in FIELDS:
                raise KeyError(f"placeholder {{{field}}} in `{command}`: give it a value in tests/test_hints.py FIELDS")
            w = w.replace(f"{{{field}}}", FIELDS[field])
        if re.fullmatch(r"[A-Z][A-Z_=]*", w):
            raise KeyError(f"placeholder {w} in `{command}`: give it a value in tests/test_hints.py WORDS")
        out.append(w)
    return shlex.join(out)


HINTS = scan_hints()
BY_COMMAND: dict[str, list[Hint]] = {}
for _hint in HINTS:
    try:
        BY_COMMAND.setdefault(concrete(_hint.command), []).append(_hint)
    except KeyError:
        pass  # reported by test_the_scan_finds_the_hints_and_knows_their_placeholders


def test_the_scan_finds_the_hints_and_knows_their_placeholders() -> None:
    assert HINTS, "no hint found: the scan is broken"
    cache_hints = {h.command for h in HINTS if h.file == "pipeline/data/cache.py"}
    assert {"python -m stages.download --dataset {dataset}", "dvc repro download@{dataset}"} <= cache_hints
    unknown = []
    for hint in HINTS:
        try:
            concrete(hint.command)
        except KeyError as err:
            unknown.append(f"{hint}: {err.args[0]}")
    assert not unknown, "\n".join(unknown)
    assert f"python -m stages.download --dataset {DATASET}" in BY_COMMAND
    assert f"dvc repro {CHEAP_STAGE}" in BY_COMMAND


def test_the_scan_reads_printed_strings_and_usage_lines_only(tmp_path: Path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "stages").mkdir()
    (tmp_path / "pipeline" / "m.py").write_text('''"""Docs: run ``dvc exp run`` or `dvc repro` (not printed)."""
def f(path, name):
    """Not printed either: python -m stages.report"""
    raise RuntimeError(f"{path}: broken; rerun `dvc repro download@{name}` or "
                       f"python -m stages.download --dataset {name}. Then retry")
X = "the dvc command is printed (re-log later: python -m stages.log_runs)"
''')
    (tmp_path / "stages" / "s.py").write_text('''"""Stage s.

    python -m stages.s --dataset D [--dry-run]

``dvc exp show`` lists it.
"""
''')
    assert [(h.file, h.line, h.command) for h in scan_hints(tmp_path)] == [
        ("pipeline/m.py", 4, "dvc repro download@{name}"),
        ("pipeline/m.py", 4, "python -m stages.download --dataset {name}"),
        ("pipeline/m.py", 6, "python -m stages.log_runs"),
        ("stages/s.py", 3, "python -m stages.s --dataset D [--dry-run]"),
    ]
    assert concrete("python -m stages.s --dataset D [--dry-run]") == "python -m stages.s --dataset digits --dry-run"
    assert concrete("dvc repro") == f"dvc repro {CHEAP_STAGE}"
    with pytest.raises(KeyError, match="placeholder RAW"):  # the hint the cache printed before
        concrete("python -m stages.download --dataset NAME --root RAW --out {path}")
    with pytest.raises(KeyError, match=r"placeholder \{path\}"):
        concrete("python -m stages.download --out {path}")


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
                MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}", GIT_AUTHOR_NAME="t",
                GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")


def run_printed(command: str, root: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as a user would paste it, with this interpreter for ``python`` and ``dvc``."""
    words = shlex.split(command)
    argv = [sys.executable, *words[1:]] if words[0] == "python" else [sys.executable, "-m", *words]
    return subprocess.run(argv, cwd=root, env=_env(root), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project, committed to git (for `dvc exp`), with its digits cache prepared."""
    params = tiny_params()
    root = copy_project(tmp_path_factory.mktemp("hints"), params)
    subprocess.run(["git", "add", "."], cwd=root, check=True, env=_env(root))
    subprocess.run(["git", "commit", "-qm", "scratch"], cwd=root, check=True, env=_env(root))
    from pipeline.config import validate
    from pipeline.jobs.download import download_job

    with pytest.MonkeyPatch.context() as patch:  # what conftest.prepare_in does
        patch.chdir(root)
        download_job(validate(params), DATASET)
    return root


def _cache_is_intact(root: Path) -> bool:
    from pipeline.data import cache, registry

    params = {"dataset": DATASET, **{k: v for k, v in registry.resolve_options(
        DATASET, tiny_params()["datasets"][DATASET]["prepare"]).items() if k not in registry.RUNTIME_OPTIONS}}
    return cache.is_cached(root / "data/prepared" / DATASET, params)


def _damage_cache(root: Path) -> Path:
    """Flip the last byte of the digits training images (the size stays the same)."""
    file = root / "data/prepared" / DATASET / "train.images.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    return file


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.lower().startswith("error:")]
    assert "Traceback" not in proc.stdout + proc.stderr and "usage:" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", sorted(BY_COMMAND))
def test_every_hint_runs_as_printed(project: Path, command: str) -> None:
    where = "\n".join(map(str, BY_COMMAND[command]))
    rebuilds_cache = command in (f"python -m stages.download --dataset {DATASET}", f"dvc repro {CHEAP_STAGE}")
    if rebuilds_cache:  # the state these are printed in: a damaged prepared cache
        _damage_cache(project)
        assert not _cache_is_intact(project)
    proc = run_printed(command, project)
    if rebuilds_cache and command.startswith("python"):  # (dvc repro deletes the out before the stage runs)
        assert f"data/prepared/{DATASET}/train.images.npy: " in proc.stdout and "rebuilding" in proc.stdout
    if command in EXPECTED_FAILURES:
        why, message = EXPECTED_FAILURES[command]
        assert proc.returncode != 0, f"`{command}` was expected to fail ({why}):\n{proc.stdout}"
        assert re.search(message, _one_error_line(proc)), proc.stderr
        return
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (
        f"`{command}` (printed at\n{where}) exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    if rebuilds_cache:
        assert _cache_is_intact(project)


def test_a_damaged_cache_stops_the_next_stage_with_one_line_and_its_hint_repairs_it(project: Path) -> None:
    """The issue's case: a truncated train.images.npy, then the train stage (it used to die with
    'mmap length is greater than file size', naming no file)."""
    file = project / "data/prepared" / DATASET / "train.images.npy"
    good = file.read_bytes()
    file.write_bytes(good[: len(good) // 2])
    proc = run_printed(f"python -m stages.train --dataset {DATASET} --method {METHOD} --seed {SEED}", project)
    assert proc.returncode == 1
    line = _one_error_line(proc)
    assert line.startswith(f"error: data/prepared/{DATASET}/train.images.npy: ") and "truncated" in line
    printed = commands_in(line)
    assert printed == [f"python -m stages.download --dataset {DATASET}", f"dvc repro download@{DATASET}"]
    # The scan knows both, so test_every_hint_runs_as_printed runs each on a damaged cache.
    assert set(printed) <= set(BY_COMMAND)
    file.write_bytes(good)
    assert _cache_is_intact(project)
