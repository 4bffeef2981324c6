"""What the benchmark scripts share: provenance, JSONL rows, timers, C2ST workers, table cells.

Each script in this folder keeps its own problems, its ``run_one`` and its tables; this module
holds the plumbing they all need, so that a row written by one script reads like a row
written by another:

- set-up: :func:`use_one_thread`, :func:`table_markers`, ``RESULTS``, ``README``;
- provenance: :func:`environment` / :func:`run_environment` (machine, versions, git commit,
  a hash of the ``sbi_vi`` sources as imported), :func:`now`, :func:`load_average`,
  :func:`log_start`;
- rows: :func:`write_row`, :func:`load_rows`, :func:`latest_by`, :func:`merge_c2st`,
  :func:`replace_block` (a generated table between two markers of a README);
- timing: :class:`Timer`, :func:`timed`, :func:`time_limit` / :class:`TimeLimitExceeded`;
- failures: :func:`error_fields`, :func:`warning_list`, :class:`WarningLog`,
  :func:`logged_warnings`, :func:`silenced`;
- C2ST of saved draws in a low-priority worker: :func:`c2st_job`, :class:`C2STRunner`;
- summaries and cells: :func:`mean`, :func:`median`, :func:`ratio`, :func:`cell`, :func:`mark`;
- command lines: :func:`name_list`, :func:`add_subset_option`, :func:`add_c2st_options`,
  :func:`int_list`, :func:`output_path`, :func:`configure_logging`.

The scripts run from this folder (``python benchmarks/<script>.py``), so ``benchmarks/`` is on
``sys.path`` and they import this module as ``harness``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it, so that a script can import this
# module and call `use_one_thread` before numpy and torch are imported.

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
README = ROOT / "README.md"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

logger = logging.getLogger("benchmarks")

# ---------------------------------------------------------------------------- set-up


def use_one_thread() -> None:
    """One thread for OpenMP, MKL and OpenBLAS (torch, numpy, scikit-learn), unless set.

    Call it before numpy and torch are imported: they read these variables once.
    """
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def table_markers(name: str) -> tuple[str, str]:
    """The comments around the table of ``name`` in the README (:func:`replace_block`)."""
    return f"<!-- {name} table: start -->", f"<!-- {name} table: end -->"


# ---------------------------------------------------------------------------- provenance


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``started`` / ``finished`` of rows)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None where it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git(*args: str) -> str | None:
    """The stripped output of ``git <args>`` in the repository, or None where git fails."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT.parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float:
    """The 1-minute load average of the machine (timings on a shared machine need it)."""
    return os.getloadavg()[0]


def sbi_vi_path() -> str:
    """The folder of the ``sbi_vi`` package as imported."""
    import sbi_vi

    return str(Path(sbi_vi.__file__).parent)


def source_hash() -> str:
    """Hash of the sbi_vi sources as imported (the package may be edited concurrently)."""
    digest = hashlib.sha1()
    for path in sorted(Path(sbi_vi_path()).rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def environment(versions: Mapping[str, str]) -> dict[str, Any]:
    """What a row needs to be read later: machine, versions, code state.

    Args:
        versions: row key → distribution name of each package whose version the row records
            (``{"sbi": "sbi", "sklearn": "scikit-learn"}``); a missing package records None.

    Returns:
        ``device_name``, ``host``, ``cpu_count``, ``torch_threads``, ``python``, ``torch``,
        one key per entry of ``versions``, ``git_commit``, ``sbi_vi_dirty`` (uncommitted
        changes under ``sbi_vi/``) and ``sbi_vi_src_hash`` (:func:`source_hash`).
    """
    import torch

    return {
        "device_name": cpu_model(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{key: package_version(name) for key, name in versions.items()},
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "sbi_vi_dirty": bool(git("status", "--porcelain", "sbi_vi")),
        "sbi_vi_src_hash": source_hash(),
    }


def log_start(env: dict[str, Any], output: Path) -> None:
    """Log the environment of a run and where its rows (and C2ST rows) go."""
    logger.info("environment: %s", json.dumps(env))
    logger.info("writing rows to %s (C2ST: %s)", output, c2st_output_for(output))


def run_environment(versions: Mapping[str, str], device: str = "cpu") -> dict[str, Any]:
    """:func:`environment` with the ``device`` the row ran on and ``sbi_vi_path``.

    Args:
        versions: as for :func:`environment`.
        device: where the timed work ran (``"cpu"``, ``"cuda"``).

    Returns:
        ``device``, the fields of :func:`environment`, and ``sbi_vi_path``
        (:func:`sbi_vi_path`: which checkout the row measured).
    """
    return {"device": device, **environment(versions), "sbi_vi_path": sbi_vi_path()}


# ---------------------------------------------------------------------------- rows


def write_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to ``path`` and flush it to disk at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file, in order; [] where it does not exist, bad lines skipped."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("skipping a malformed line of %s", path)
    return rows


def latest_by(rows: Iterable[dict[str, Any]], key: Callable[[dict], Hashable]) -> dict:
    """The last row of each ``key(row)``: later runs of one configuration replace earlier."""
    return {key(row): row for row in rows}


def c2st_output_for(output: Path) -> Path:
    """Where the C2ST rows of the runs in ``output`` go: ``<stem>_c2st.jsonl`` beside it."""
    return output.with_name(output.stem + "_c2st.jsonl")


def merge_c2st(records: Iterable[dict[str, Any]], c2st_rows: Mapping[Hashable, dict]) -> None:
    """Copy the ``c2st*`` fields of each record's C2ST row into it, in place.

    Args:
        records: dicts holding a ``sample_id``.
        c2st_rows: C2ST rows by ``sample_id`` (``latest_by(rows, lambda r: r["sample_id"])``).
    """
    for record in records:
        extra = c2st_rows.get(record.get("sample_id"))
        if extra is not None:
            record.update({k: v for k, v in extra.items() if k.startswith("c2st")})


def replace_block(path: Path, start: str, end: str, block: str) -> None:
    """Put ``block`` between the markers ``start`` and ``end`` of a README, or append it.

    ``block`` includes the markers. A file without both markers gets it at its end (a new
    file starts with ``# Benchmarks``).
    """
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = (text.rstrip() + "\n\n" if text else "# Benchmarks\n\n") + block + "\n"
    path.write_text(text)


# ---------------------------------------------------------------------------- timing


class Timer:
    """Wall and CPU seconds of a block (``with timer.time(): ...``) or of wrapped calls.

    ``wall``, ``cpu`` and ``calls`` add up over every block and call.
    """

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.calls = 0

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        """Time the block (counted also when it raises)."""
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - w
            self.cpu += time.process_time() - c
            self.calls += 1

    def wrap(self, fn: Callable) -> Callable:
        """``fn`` with every call timed."""

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            with self.time():
                return fn(*args, **kwargs)

        return timed_call


@contextlib.contextmanager
def timed(out: dict[str, Any], name: str) -> Iterator[None]:
    """Record ``{name}_wall_s`` and ``{name}_cpu_s`` of the block in ``out``."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        out[f"{name}_wall_s"] = time.perf_counter() - wall
        out[f"{name}_cpu_s"] = time.process_time() - cpu


class TimeLimitExceeded(Exception):
    """A timed block ran past its limit (:func:`time_limit`)."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the main thread after ``seconds`` of wall time.

    Args:
        seconds: the limit; None or 0 (or a platform without ``SIGALRM``) sets none.
        what: what is timed, for the message.

    Raises:
        TimeLimitExceeded: the block ran past ``seconds``.
    """
    import signal

    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded(f"{what} ran past the time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------- failures


def error_fields(err: BaseException) -> dict[str, Any]:
    """The row fields of a failure: ``error``, ``traceback`` and, past a limit, ``timed_out``.

    Call it inside the ``except`` block (it reads the traceback being handled).
    """
    out: dict[str, Any] = {
        "error": f"{type(err).__name__}: {err}"[:1000],
        "traceback": traceback.format_exc()[-3000:],
    }
    if isinstance(err, TimeLimitExceeded):
        out["timed_out"] = True
    return out


def warning_list(caught: list[warnings.WarningMessage]) -> list[str] | None:
    """The distinct warnings caught by ``warnings.catch_warnings(record=True)``, or None."""
    return sorted({f"{w.category.__name__}: {str(w.message)[:300]}" for w in caught}) or None


class WarningLog(logging.Handler):
    """A logging handler that keeps the messages of WARNING and above in ``messages``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record's message (300 characters at most)."""
        self.messages.append(f"{record.name}: {record.getMessage()}"[:300])


@contextlib.contextmanager
def logged_warnings(*names: str) -> Iterator[WarningLog]:
    """Keep the WARNING messages of the loggers ``names`` while the block runs."""
    log = WarningLog()
    for name in names:
        logging.getLogger(name).addHandler(log)
    try:
        yield log
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(log)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No warnings and no printed output in the block (warm-up calls that are not timed)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------- C2ST


def low_priority_worker() -> None:
    """Initialise a worker: low priority and one thread, to disturb timed work little."""
    import torch

    with contextlib.suppress(OSError):
        os.nice(10)
    torch.set_num_threads(1)


def c2st_job(
    ids: dict[str, Any],
    task: str,
    num_observation: int,
    samples_path: str,
    max_samples: int | None,
    seed: int,
    output: str,
) -> dict[str, Any]:
    """C2ST of saved q draws against a task's reference draws; appends one row to ``output``.

    Args:
        ids: the fields that name the draws in the row (``{"sample_id": ...}``).
        task: the task whose reference posterior serves.
        num_observation: the observation of that reference.
        samples_path: a ``torch.save`` of the q draws ``[N, D]``.
        max_samples: rows of each set the classifier sees (None: all).
        seed: the classifier's seed (taken modulo 2**31).
        output: the C2ST JSONL file.

    Returns:
        The row: ``kind="c2st"``, ``ids``, ``c2st`` (None with ``c2st_error`` on a failure:
        a broken q is a result, not a crash), its wall and CPU seconds, the times.
    """
    import torch

    from sbi_vi.diagnostics import c2st
    from sbi_vi.tasks import get_task

    torch.set_num_threads(1)
    row: dict[str, Any] = {"kind": "c2st", **ids, "started": now()}
    try:
        theta = torch.load(samples_path)
        reference = get_task(task).get_reference_posterior_samples(num_observation)
        wall, cpu = time.perf_counter(), time.process_time()
        row["c2st"] = c2st(theta, reference, seed=seed % 2**31, max_samples=max_samples)
        row["c2st_wall_s"] = time.perf_counter() - wall
        row["c2st_cpu_s"] = time.process_time() - cpu
    except Exception as err:  # a broken q is a result, not a crash
        row["c2st"] = None
        row["c2st_error"] = f"{type(err).__name__}: {err}"[:500]
    row["c2st_max_samples"] = max_samples
    row["finished"] = now()
    write_row(Path(output), row)
    return row


def log_c2st(row: dict[str, Any]) -> None:
    """Log one C2ST row: its ids, the value or the error, the seconds."""
    ids = " ".join(
        f"{k}={v}"
        for k, v in row.items()
        if k not in ("kind", "started", "finished") and not k.startswith("c2st")
    )
    value = row.get("c2st")
    text = "error " + row.get("c2st_error", "") if value is None else f"{value:.3f}"
    logger.info("c2st %s: %s (%.0f s)", ids, text, row.get("c2st_wall_s") or 0)


class C2STRunner:
    """C2ST of saved draws inline, deferred, skipped, or in one low-priority worker process.

    Args:
        mode: ``"background"`` (one spawned worker at low priority, so that timing never
            waits), ``"inline"``, ``"defer"`` (draws saved, C2ST left to a later pass) or
            ``"skip"``.
        output: the runs' JSONL file; C2ST rows go to :func:`c2st_output_for` of it.
        samples_dir: where the draws are saved for the worker.

    Raises:
        ValueError: ``mode`` is none of the four.
    """

    MODES = ("background", "inline", "defer", "skip")

    def __init__(self, mode: str, output: Path, samples_dir: Path):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}; got {mode!r}")
        self.mode = mode
        self.output = c2st_output_for(output)
        self.samples_dir = samples_dir
        self.pool = None
        if mode == "background":
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                max_workers=1, mp_context=mp.get_context("spawn"), initializer=low_priority_worker
            )

    def submit(
        self,
        ids: dict[str, Any],
        name: str,
        task: str,
        num_observation: int,
        theta: torch.Tensor,
        max_samples: int | None,
        seed: int,
    ) -> None:
        """Save ``theta`` as ``<samples_dir>/<name>.pt`` and compute (or queue) its C2ST.

        Args: as :func:`c2st_job`, with ``name`` the file name of the draws and ``theta``
        the draws.
        """
        import torch

        if self.mode == "skip":
            return
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / f"{name}.pt"
        torch.save(theta, path)
        if self.mode == "defer":
            return  # computed later from the saved draws (e.g. in a parallel process)
        job = (ids, task, num_observation, str(path), max_samples, seed, str(self.output))
        if self.pool is None:
            log_c2st(c2st_job(*job))
        else:
            self.pool.submit(c2st_job, *job).add_done_callback(
                lambda fut: log_c2st(fut.result()) if not fut.exception() else None
            )

    def close(self) -> None:
        """Wait for the pending jobs."""
        if self.pool is not None:
            logger.info("waiting for the pending C2ST jobs ...")
            self.pool.shutdown(wait=True)


# ---------------------------------------------------------------------------- summaries


def _kept(values: Iterable[float | None], finite_only: bool) -> list[float]:
    drop = (lambda v: not math.isfinite(v)) if finite_only else math.isnan
    return [v for v in values if v is not None and not drop(v)]


def mean(values: Iterable[float | None], *, finite_only: bool = False) -> float | None:
    """The mean of the values that are not None or NaN (nor infinite, with ``finite_only``);
    None where none is left."""
    kept = _kept(values, finite_only)
    return statistics.fmean(kept) if kept else None


def median(values: Iterable[float | None], *, finite_only: bool = False) -> float | None:
    """The median of the values that are not None or NaN (nor infinite, with
    ``finite_only``); None where none is left."""
    kept = _kept(values, finite_only)
    return statistics.median(kept) if kept else None


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None where either is missing or ``b`` is 0."""
    return a / b if a is not None and b else None


def cell(value: Any, fmt: str = ".1f") -> str:
    """A table cell: ``value`` formatted, ``—`` for None, ``nan`` / ``inf`` as they are."""
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, fmt)


def mark(flag: bool | None) -> str:
    """A target cell: ✓, ✗, or ``—`` where nothing was decided."""
    return "—" if flag is None else ("✓" if flag else "✗")


# ---------------------------------------------------------------------------- command lines


def name_list(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated, non-empty subset of ``allowed``."""

    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(allowed)}; got {text!r}"
            )
        return names

    return parse


def add_subset_option(
    parser: argparse.ArgumentParser, flag: str, allowed: tuple[str, ...], help: str | None = None
) -> None:
    """Add ``flag``: a comma-separated subset of ``allowed`` (:func:`name_list`), default all."""
    parser.add_argument(flag, type=name_list(allowed), default=list(allowed), help=help)


def add_c2st_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--c2st`` (a :class:`C2STRunner` mode) and ``--c2st-missing``."""
    parser.add_argument(
        "--c2st",
        choices=C2STRunner.MODES,
        default="background",
        help="C2ST in a low-priority worker process (default), inline, deferred to a later "
        "`--c2st-missing` (the draws are kept), or not at all",
    )
    parser.add_argument(
        "--c2st-missing",
        action="store_true",
        help="compute the C2ST of finished runs that lack one, from their saved draws",
    )


def configure_logging() -> None:
    """INFO messages with the time of day, to stderr (every script's progress lines)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )


def int_list(low: int, high: int) -> Callable[[str], list[int]]:
    """An argparse ``type``: comma-separated whole numbers, each in ``low..high``."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(t) for t in text.split(",") if t.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers: {text!r}"
            ) from err
        if not values or any(not low <= v <= high for v in values):
            raise argparse.ArgumentTypeError(f"expected numbers in {low}..{high}; got {text!r}")
        return values

    return parse


def output_path(args: argparse.Namespace, default: Path, quick: Path) -> Path:
    """``--output`` where given, else ``quick`` under ``--quick``, else ``default``."""
    if args.output:
        return Path(args.output)
    return quick if args.quick else default
