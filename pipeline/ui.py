"""The MLflow UI over the project's store, light, and as a person sees it.

    python -m pipeline.ui serve [--store URI] [--port 5000]          # `make ui`
    python -m pipeline.ui screenshots [--store URI] [--out reports/ui]  # `make ui-screenshots`

``serve`` runs MLflow's server light: one web worker (``--workers 1``; MLflow's default is 4)
and no background job runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``; by default MLflow
3 starts a huey job runner with 7 consumer processes for GenAI evaluation jobs this project
never submits), bound to 127.0.0.1. Measured on a tiny store (idle, after start-up): 3 processes
(this one, 23 MB; MLflow's CLI; one uvicorn worker), 510 MiB of RSS, against 15 processes and
2585 MiB for plain ``mlflow ui`` (4 workers, the job runner and its 7 huey consumers).

Which metric columns MLflow's runs table shows is a per-browser setting (the UI keeps it in the
browser's local storage); a new visitor sees none. MLflow 3's *saved views* are the stored,
shareable form of that setting: an experiment tag ``mlflow.sharedViewState.<key>`` holding
``{"name", "createdAt", "updatedAt", "state"}``, ``state`` being the JSON of the table's view
(selected columns, sort), opened by ``#/experiments/<id>/runs?viewStateShareKey=<key>`` (the
link the UI's own "Copy share link" gives). Before serving, each ``thanos-bench/<dataset>``
experiment gets (or keeps) such a view, ``Headline``: columns method, seed and the dataset's
headline metric, best first; ``serve`` prints one such link per experiment. It is listed
under the runs table's saved views, and "Exit shared view" returns to the visitor's own view.

``screenshots`` starts the same server on a free loopback port, drives headless Chromium
(Debian's ``chromium``) to save the runs table and the compare view of one experiment under
``reports/ui/``, then stops the server.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlencode

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
WORKERS = 1
# The switch MLflow documents for its background job runner (mlflow/environment_variables.py).
LIGHT_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow 3's saved views (experiment tags)
VIEW_KEY = "headline"
VIEW_NAME = "Headline"
# The sidebar's "Model training" side (MLflow 3 opens on "GenAI" unless told or remembered).
WORKFLOW = "machine_learning"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1600, 1000)
BUDGET_MS = 15000  # Chromium's virtual time budget: the SPA has loaded its runs by then
DEFAULT_OUT = Path("reports/ui")


class UIError(RuntimeError):
    """A one-line failure of the UI tooling (missing browser, busy port, server that does not start)."""


class ChromiumMissing(UIError):
    """No Chromium on PATH."""


def _headline_candidates() -> list[str]:
    """The metric keys that are a dataset's headline: params.yaml's ``report.headline`` (when it
    loads), then every coarse-to-fine choice and the worst-group headline (:mod:`pipeline.tasks`)."""
    from pipeline.config import HEADLINE_METRICS
    from pipeline.tasks import WorstGroup

    first: list[str] = []
    try:
        from pipeline.config import load_params

        first = [load_params("params.yaml").report.headline]
    except Exception:  # no or an invalid params.yaml here: the defaults below still apply
        pass
    return list(dict.fromkeys([*first, *HEADLINE_METRICS, WorstGroup.HEADLINE]))


def column(kind: str, key: str) -> str:
    """The runs table's column id of a metric/param/tag (``metrics.`fine_head_acc```)."""
    return f"{kind}.`{key}`"


def view_state(metric: str) -> dict[str, Any]:
    """The saved view's table state: method, seed and ``metric`` as columns, best ``metric`` first."""
    return {"orderByKey": column("metrics", metric), "orderByAsc": False, "searchFilter": "",
            "selectedColumns": [column("params", "method"), column("params", "seed"), column("metrics", metric)]}


def view_url(base: str, experiment_id: str, key: str = VIEW_KEY) -> str:
    """The link that opens an experiment's runs table in saved view ``key``."""
    query = urlencode({"viewStateShareKey": key, "compareRunsMode": "TABLE", "workflowType": WORKFLOW})
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The link of MLflow's compare view of ``run_ids`` (params and metrics side by side)."""
    runs, exps = json.dumps(list(run_ids)), json.dumps([experiment_id])
    return (f"{base.rstrip('/')}/#/compare-runs?runs={quote(runs)}&experiments={quote(exps)}"
            f"&workflowType={WORKFLOW}")


@dataclass(frozen=True)
class ExperimentView:
    """One ``thanos-bench/<dataset>`` experiment, its headline metric and its model runs."""

    name: str
    experiment_id: str
    metric: str | None  # None: no run has a headline metric yet
    runs: tuple[tuple[str, str, float], ...]  # (run id, run name, headline value), best first

    def url(self, base: str) -> str:
        if self.metric:
            return view_url(base, self.experiment_id)
        query = urlencode({"compareRunsMode": "TABLE", "workflowType": WORKFLOW})
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs?{query}"


def _envelope(state: Mapping[str, Any], created: int, updated: int) -> str:
    return json.dumps({"name": VIEW_NAME, "createdAt": created, "updatedAt": updated,
                       "state": json.dumps(dict(state), sort_keys=True)}, sort_keys=True)


def headline_views(store_uri: str, *, write: bool = True) -> list[ExperimentView]:
    """Each ``thanos-bench/*`` experiment of the store, with its saved view ``Headline`` written
    where missing or out of date (``write=False``: only read)."""
    from pipeline.tracking import EXPERIMENT_PREFIX, connect, search_all_runs

    client = connect(store_uri)
    candidates = _headline_candidates()
    out = []
    experiments = [e for e in client.search_experiments(max_results=1000)
                   if e.name.startswith(f"{EXPERIMENT_PREFIX}/")]
    for exp in sorted(experiments, key=lambda e: e.name):
        runs = search_all_runs(client, [exp.experiment_id])
        keys = {k for r in runs for k in r.data.metrics}
        metric = next((m for m in candidates if m in keys), None)
        rows = tuple(sorted(((r.info.run_id, r.info.run_name or "", r.data.metrics[metric]) for r in runs
                             if metric in r.data.metrics), key=lambda row: -row[2])) if metric else ()
        if metric and write:
            _write_view(client, exp, view_state(metric))
        out.append(ExperimentView(exp.name, exp.experiment_id, metric, rows))
    return out


def _write_view(client: Any, experiment: Any, state: Mapping[str, Any]) -> None:
    """Set the experiment's saved view :data:`VIEW_KEY` to ``state`` (untouched when it already is)."""
    tag = VIEW_TAG_PREFIX + VIEW_KEY
    now = int(time.time() * 1000)
    created = now
    old = experiment.tags.get(tag)
    if old:
        try:
            envelope = json.loads(old)
            if json.loads(envelope["state"]) == dict(state):
                return
            created = int(envelope["createdAt"])
        except (ValueError, KeyError, TypeError):
            pass
    client.set_experiment_tag(experiment.experiment_id, tag, _envelope(state, created, now))


# --- the server --------------------------------------------------------------------------------

def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on (free at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def default_store() -> str:
    from pipeline.tracking import repository_root

    return f"sqlite:///{repository_root() / 'mlflow.db'}"


def check_store(store_uri: str) -> None:
    """A one-line :class:`UIError` where an ``sqlite:///`` store does not exist (MLflow would
    create an empty one and show nothing)."""
    prefix = "sqlite:///"
    if store_uri.startswith(prefix):
        path = Path(store_uri[len(prefix):].partition("?")[0])
        if not path.is_file():
            raise UIError(f"{path}: no MLflow store there; run `make repro` first, or pass --store URI")
    elif store_uri.startswith(("http://", "https://")):
        raise UIError(f"{store_uri} is a tracking server already: open it in a browser, or pass --store "
                      "sqlite:///path/to/mlflow.db")


def server_command(store_uri: str, port: int, host: str = HOST) -> list[str]:
    """MLflow's server on ``host:port`` over ``store_uri`` with one web worker (run it with
    :func:`server_env`, which turns the background job runner off)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    launcher = [str(mlflow)] if mlflow.is_file() else [sys.executable, "-m", "mlflow"]
    return [*launcher, "server", "--backend-store-uri", store_uri, "--host", host, "--port", str(port),
            "--workers", str(WORKERS)]


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default the environment) with MLflow's job runner off (:data:`LIGHT_ENV`)."""
    return {**(os.environ if base is None else base), **LIGHT_ENV}


def wait_until_up(base: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Return once ``base/health`` answers; a :class:`UIError` if the server exits or stays silent."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise UIError(f"the MLflow server exited with status {proc.returncode} before answering at {base}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UIError(f"the MLflow server did not answer at {base} within {timeout:.0f} s")
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """End ``proc`` and every process of its group (it leads one: ``start_new_session``)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its children (the web worker) may still be stopping.
        end = time.monotonic() + wait
        while _group_alive(proc.pid) and time.monotonic() < end:
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            break
    if proc.poll() is None:
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (Linux ``/proc``), zombies excluded."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return sorted(pids)


@contextmanager
def running_server(store_uri: str, port: int | None = None, *, log: TextIO | None = None,
                   timeout: float = 120.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """The light MLflow server over ``store_uri`` on 127.0.0.1 (a free port unless given), as
    ``(base URL, process)`` once it answers; on exit the whole process group is ended."""
    port = port or free_port()
    if port_in_use(port):
        raise UIError(f"{HOST}:{port} is in use (another `make ui`?): stop it, or pick another port")
    base = f"http://{HOST}:{port}"
    proc = subprocess.Popen(server_command(store_uri, port), env=server_env(), start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
    try:
        wait_until_up(base, proc, timeout)
        yield base, proc
    finally:
        stop_group(proc)


# --- the browser -------------------------------------------------------------------------------

def chromium() -> str:
    """The Chromium executable; :class:`ChromiumMissing` with the install command where none is on PATH."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumMissing("chromium not found: apt-get install chromium (Debian's package)")


def _browse(url: str, *action: str, timeout: float = 120.0, window: tuple[int, int] = WINDOW,
            budget_ms: int = BUDGET_MS) -> str:
    """Run headless Chromium on ``url`` with ``action`` flags (``--dump-dom``, ``--screenshot=...``)
    in a fresh profile (no remembered table settings), its processes ended afterwards; its stdout.
    ``budget_ms``: how long the page's scripts run (virtual time: network waits do not count)."""
    with tempfile.TemporaryDirectory(prefix="thanos-bench-chromium-") as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--no-first-run", "--disable-extensions", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
               f"--virtual-time-budget={budget_ms}", *action, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc, grace=2.0)
            raise UIError(f"chromium did not finish {url} within {timeout:.0f} s") from None
        finally:
            if proc.poll() is None:
                stop_group(proc, grace=2.0)
            elif _group_alive(proc.pid):  # helpers (zygote, GPU process) outlived the browser
                stop_group(proc, grace=2.0)
        if proc.returncode != 0:
            last = [line for line in err.splitlines() if line.strip()][-1:] or ["no message"]
            raise UIError(f"chromium exited with status {proc.returncode} on {url}: {last[0][:300]}")
        return out


def dump_dom(url: str, **kwargs: Any) -> str:
    """The page's DOM after Chromium ran its scripts for :data:`BUDGET_MS` of virtual time."""
    return _browse(url, "--dump-dom", **kwargs)


def screenshot(url: str, path: str | Path, **kwargs: Any) -> Path:
    """A PNG of the page at ``path`` (its folder created)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    _browse(url, f"--screenshot={path}", **kwargs)
    if not path.is_file() or path.stat().st_size == 0:
        raise UIError(f"chromium wrote no screenshot at {path}")
    return path


_VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())  # no end tag


class _GridReader(html.parser.HTMLParser):
    """The cells of the runs table (ag-grid: ``role=row`` with ``row-id``, cells with ``col-id``)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._stack: list[tuple[str, str | None, str | None]] = []  # (tag, row id, col id)
        self._text: dict[tuple[str, str], list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        row, col = (self._stack[-1][1], self._stack[-1][2]) if self._stack else (None, None)
        if a.get("role") == "row" and a.get("row-id") is not None:
            row, col = a["row-id"], None
        if a.get("col-id") is not None and row is not None and a.get("role") == "gridcell":
            col = a["col-id"]
        if tag not in _VOID:
            self._stack.append((tag, row, col))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1][1] is not None and self._stack[-1][2] is not None:
            _, row, col = self._stack[-1]
            self._text.setdefault((row, col), []).append(data)

    def table(self) -> dict[str, dict[str, str]]:
        """{row id: {column id: text}} (ag-grid splits pinned and scrolled columns into two rows
        elements of the same row id; they are merged)."""
        for (row, col), parts in self._text.items():
            self.rows.setdefault(row, {})[col] = " ".join(" ".join(parts).split())
        return self.rows


def runs_table(dom: str) -> list[dict[str, str]]:
    """The rows of the runs table in a dumped DOM: {column id: shown text} (the run name's column
    is ``run_name``; metrics/params as in :func:`column`)."""
    reader = _GridReader()
    reader.feed(dom)
    rows = []
    for cells in reader.table().values():
        named = {("run_name" if c.startswith("attributes.`Run Name`") or c == "run_name" else c): v
                 for c, v in cells.items()}
        rows.append(named)
    return rows


# --- commands ----------------------------------------------------------------------------------

def link_lines(views: Sequence[ExperimentView], base: str) -> list[str]:
    """One line per experiment: its name, the link to its runs table, the headline metric."""
    return [f"  {v.name:<30} {v.url(base)}   ({v.metric or 'no headline metric logged yet'})" for v in views]


def serve(store_uri: str, port: int = DEFAULT_PORT, *, out: TextIO = sys.stdout) -> int:
    """``make ui``: the light server in the foreground, its links printed once it answers.

    The saved views are written by a child process (``links``), so that this one, which waits for
    the server for as long as it runs, never imports MLflow (~250 MB)."""
    check_store(store_uri)
    if port_in_use(port):
        raise UIError(f"{HOST}:{port} is in use (another `make ui`?): stop it, or `make ui UI_PORT={port + 1}`")
    base = f"http://{HOST}:{port}"
    found = subprocess.run([sys.executable, "-m", "pipeline.ui", "links", "--store", store_uri, "--base", base],
                           capture_output=True, text=True)
    if found.returncode != 0:
        last = [line for line in found.stderr.splitlines() if line.strip()][-1:] or ["no message"]
        raise UIError(f"could not read the experiments of {store_uri}: {last[0].removeprefix('error: ')}")
    proc = subprocess.Popen(server_command(store_uri, port), env=server_env(), stdin=subprocess.DEVNULL)
    try:
        wait_until_up(base, proc)
        print(f"\nMLflow UI on {base} (1 web worker, no job runner, {HOST} only; Ctrl-C stops it).\n"
              "Each experiment's runs table, one row per model, headline metric shown, best first:", file=out)
        print(found.stdout.rstrip("\n") or f"  (no thanos-bench experiment in {store_uri} yet)", file=out, flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def take_screenshots(store_uri: str, out_dir: str | Path = DEFAULT_OUT, experiment: str | None = None,
                     *, echo: TextIO = sys.stdout) -> list[Path]:
    """Save ``runs_table.png`` and ``compare.png`` of one experiment (default: the first) under ``out_dir``."""
    chromium()  # fail before starting anything
    check_store(store_uri)
    views = [v for v in headline_views(store_uri) if v.runs]
    if experiment:
        views = [v for v in views if v.name in (experiment, f"thanos-bench/{experiment}")]
    if not views:
        raise UIError(f"{store_uri}: no thanos-bench experiment with a headline metric"
                      + (f" named {experiment}" if experiment else ""))
    view = views[0]
    out_dir = Path(out_dir)
    with tempfile.TemporaryFile("w+") as log, running_server(store_uri, log=log) as (base, _):
        shots = [screenshot(view.url(base), out_dir / "runs_table.png"),
                 screenshot(compare_url(base, view.experiment_id, [r[0] for r in view.runs]),
                            out_dir / "compare.png")]
    for shot in shots:
        print(f"wrote {shot}", file=echo)
    return shots


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ui", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="the light MLflow UI in the foreground (make ui)")
    p_shots = sub.add_parser("screenshots", help="PNGs of the runs table and the compare view")
    p_links = sub.add_parser("links", help="write each experiment's saved view; print its link")
    for p in (p_serve, p_shots, p_links):
        p.add_argument("--store", default=None, help="tracking store URI (default: mlflow.db at the repository root)")
    p_serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST} (default {DEFAULT_PORT})")
    p_shots.add_argument("--out", default=str(DEFAULT_OUT), help=f"folder (default {DEFAULT_OUT})")
    p_shots.add_argument("--experiment", default=None, help="dataset or experiment name (default: the first)")
    p_links.add_argument("--base", default=f"http://{HOST}:{DEFAULT_PORT}", help="the server's address")
    args = parser.parse_args(argv)
    store = args.store or default_store()
    try:
        if args.command == "serve":
            return serve(store, args.port)
        if args.command == "links":
            check_store(store)
            print("\n".join(link_lines(headline_views(store), args.base)))
            return 0
        take_screenshots(store, args.out, args.experiment)
        return 0
    except UIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
