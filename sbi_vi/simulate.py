r"""Run a simulator on parameters drawn from a prior: batched, seeded, parallel, distributed.

:func:`simulate` draws :math:`\theta_n \sim p(\theta)` (or a proposal) and runs
:math:`x_n \sim p(x \mid \theta_n)` for ``n = 1..N``, in chunks of ``simulation_batch_size``
rows that run one after the other, on joblib worker processes, or on a Dask cluster.

Reproducibility. The rows are cut into a fixed sequence of chunks that depends only on
``num_simulations`` and ``simulation_batch_size``. Chunk ``i`` gets its own seed, derived
from ``seed`` and ``i`` with :class:`numpy.random.SeedSequence`; before the simulator runs on
a chunk, torch's CPU generator, numpy's global generator (``np.random.*``) and Python's
``random`` are seeded with it, and they are restored afterwards. Hence the same ``seed``
and ``simulation_batch_size`` give identical ``(theta, x)`` whatever ``num_workers``,
``backend`` or Dask ``client``; a different ``simulation_batch_size`` gives different
(equally valid) draws, because a batch simulator consumes one random stream per chunk.
Within a chunk a one-at-a-time simulator runs the rows in order on the same stream, so a
simulator that draws each row's numbers in row order (``torch.rand``, ``np.random.normal``)
gives the same ``x`` called on batches or row by row, for the same ``simulation_batch_size``
(the defaults of the two kinds differ). A simulator that makes its own unseeded generator
(``np.random.default_rng()``) cannot be reproduced.

Chunks that share a process also share its global random generators, so they run one at a
time in each process (a lock guards them): threaded Dask workers give no speed-up; the
default ``LocalCluster`` and joblib's ``loky`` workers are processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_vi._checks import check_choice, check_positive_int, seeded
from sbi_vi.errors import SimulationError, SimulationWarning

__all__ = [
    "DEFAULT_BATCH_SIZE_ONE_AT_A_TIME",
    "DEFAULT_BATCH_SIZE_VECTORIZED",
    "SimulationError",
    "simulate",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE_VECTORIZED = 1000
"""Rows per simulator call (and per chunk) of a batch simulator, by default."""

DEFAULT_BATCH_SIZE_ONE_AT_A_TIME = 10
"""Rows per chunk of a one-at-a-time simulator, by default: small chunks balance workers."""

_RNG_LOCK = threading.RLock()
_PROBE_WORDS = np.random.SeedSequence(0, spawn_key=(2,)).generate_state(4)


@dataclass
class _ChunkOutcome:
    """What one chunk sends back: its outputs so far and, if the simulator raised, why."""

    index: int
    x: np.ndarray  # [M, L] float32, M = all rows of the chunk unless it failed
    error: BaseException | None = None
    failed_row: int | None = None  # row within the chunk (0 for a failed batch call)


def _chunk_words(base_seed: int, key: Sequence[int]) -> np.ndarray:
    """Four uint32 words of entropy for the random stream ``key`` under ``base_seed``."""
    return np.random.SeedSequence(base_seed, spawn_key=tuple(key)).generate_state(4)


@contextlib.contextmanager
def _seeded_rngs(words: np.ndarray) -> Iterator[None]:
    """Seed torch's CPU generator, ``np.random`` and ``random``; restore them on exit."""
    # The legacy global np.random is what user simulators draw from: seeding it is the point.
    with _RNG_LOCK:
        np_state = np.random.get_state()  # noqa: NPY002
        py_state = random.getstate()
        try:
            with seeded(int(words[0]) << 32 | int(words[1])):
                np.random.seed(words)  # noqa: NPY002
                random.seed(int(words[2]) << 32 | int(words[3]))
                yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)


def _to_array(raw: Any) -> np.ndarray:
    """A simulator output (tensor, array, sequence) as a float32 numpy array."""
    if isinstance(raw, Tensor):
        raw = raw.detach().cpu().numpy()
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"The simulator must return a tensor or array of numbers, got {type(raw).__name__}."
        ) from err


def _batch_output(raw: Any, theta: Tensor) -> np.ndarray:
    """Check a batch simulator's output for ``theta`` ``[B, D]``; return ``[B, L]``."""
    x = _to_array(raw)
    batch = theta.shape[0]
    if x.ndim == 1 and x.shape[0] == batch:
        return x[:, None]
    if x.ndim == 2 and x.shape[0] == batch:
        return x
    raise ValueError(
        f"A batch simulator must return x of shape [B, L] (or [B]) for theta of shape "
        f"[B, D] = {list(theta.shape)}; got shape {list(x.shape)}. Flatten multi-dimensional "
        "outputs to [B, L] inside the simulator, or pass vectorized=False if it simulates "
        "one θ at a time."
    )


def _single_output(raw: Any, row: int) -> np.ndarray:
    """Check a one-at-a-time simulator's output; return ``[L]``."""
    x = _to_array(raw)
    if x.ndim == 0:
        return x.reshape(1)
    if x.ndim == 2 and x.shape[0] == 1:
        return x[0]
    if x.ndim == 1:
        return x
    raise ValueError(
        f"A one-at-a-time simulator must return x of shape [L] for theta of shape [D]; got "
        f"shape {list(x.shape)} for theta[{row}]. Flatten multi-dimensional outputs to [L] "
        "inside the simulator."
    )


def _portable(err: BaseException) -> BaseException:
    """The exception, with the worker's traceback as a note, made picklable if it is not."""
    text = "".join(traceback.format_exception(err))
    try:
        pickle.dumps(err)
    except Exception:
        err = RuntimeError(f"{type(err).__name__}: {err}")
    err.add_note(f"Traceback in the worker:\n{text}")
    return err


def _run_chunk(
    simulator: Callable[[Tensor], Any],
    theta: Tensor,
    words: np.ndarray,
    vectorized: bool,
    index: int,
    start: int,
    remote: bool,
) -> _ChunkOutcome:
    """Simulate one chunk of rows under its seed (runs in the worker)."""
    with _seeded_rngs(words):
        if vectorized:
            try:
                raw = simulator(theta)
            except Exception as err:
                error = _portable(err) if remote else err
                return _ChunkOutcome(index, np.empty((0, 0), np.float32), error, 0)
            return _ChunkOutcome(index, _batch_output(raw, theta))
        rows: list[np.ndarray] = []
        for j in range(theta.shape[0]):
            try:
                raw = simulator(theta[j])
            except Exception as err:
                error = _portable(err) if remote else err
                return _ChunkOutcome(index, _stack_rows(rows, start), error, j)
            rows.append(_single_output(raw, start + j))
        return _ChunkOutcome(index, _stack_rows(rows, start))


def _stack_rows(rows: list[np.ndarray], start: int) -> np.ndarray:
    if not rows:
        return np.empty((0, 0), np.float32)
    sizes = {r.shape[0] for r in rows}
    if len(sizes) > 1:
        raise ValueError(
            f"The simulator returned x of different lengths L {sorted(sizes)} for the rows "
            f"theta[{start}:{start + len(rows)}]; every simulation must give the same L."
        )
    return np.stack(rows)


def _detect_vectorized(simulator: Callable[[Tensor], Any], theta: Tensor) -> bool:
    """Whether ``simulator`` maps a batch ``[B, D]`` to ``[B, L]`` (probed on 2 rows)."""
    probe = theta[[0, min(1, theta.shape[0] - 1)]]
    with _seeded_rngs(_PROBE_WORDS):
        try:
            out = _to_array(simulator(probe))
        except Exception:
            return False
        if out.ndim >= 2 and out.shape[0] == 2:
            return True  # (an output of more than 2 dims is then reported as a bad shape)
        if out.ndim == 1 and out.shape[0] == 2:
            # [2]: a batch simulator with L = 1, or one θ giving L = 2? Ask one θ.
            try:
                single = _to_array(simulator(theta[0]))
            except Exception:
                return True
            return single.size == 1
    return False


def _format_theta(theta: Tensor) -> str:
    values = theta.detach().cpu().double().reshape(-1).tolist()
    shown = ", ".join(f"{v:.6g}" for v in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}]"


def _sequential(tasks: list[tuple]) -> Iterator[_ChunkOutcome]:
    """Run the chunks here, in order; stop after the first failure."""
    for args in tasks:
        outcome = _run_chunk(*args, remote=False)
        yield outcome
        if outcome.error is not None:
            return


def _simulator_name(simulator: Any) -> str:
    name = getattr(simulator, "__qualname__", None) or type(simulator).__qualname__
    module = getattr(simulator, "__module__", None) or type(simulator).__module__
    return f"{module}.{name}" if module else name


def _check_picklable(simulator: Any, num_workers: int, backend: str) -> None:
    """Refuse, before any worker starts, a simulator that cannot travel to a process.

    joblib and Dask send the simulator with cloudpickle (lambdas and closures go by value);
    what still fails holds an unpicklable object (a lock, an open file, a database
    connection, a generator, a C handle). Round-tripping it here gives one clear error
    instead of the executor's ``PicklingError`` or a broken worker pool.

    Raises:
        TypeError: Naming the simulator, why it cannot be pickled and what to do.
    """
    try:  # what loky and Dask use (newer joblib depends on it instead of vendoring it)
        import cloudpickle as pickler
    except ImportError:  # pragma: no cover - older joblib vendors it
        try:
            from joblib.externals import cloudpickle as pickler
        except ImportError:
            pickler = pickle
    try:
        pickler.loads(pickler.dumps(simulator))
    except Exception as err:
        where = f"{num_workers} worker processes" if backend == "joblib" else "Dask workers"
        raise TypeError(
            f"`simulator` {_simulator_name(simulator)!r} cannot be sent to {where}: it cannot "
            f"be pickled ({type(err).__name__}: {err}). Make it a module-level function (or "
            "an object whose attributes pickle: open files, locks and connections inside "
            "__call__ rather than holding them), or pass num_workers=1 to simulate in this "
            "process."
        ) from err


def _loky(tasks: list[tuple], num_workers: int) -> Iterator[_ChunkOutcome]:
    """Run the chunks on joblib's reusable ``loky`` process pool.

    After the first failure the chunks not yet started are cancelled and those running are
    waited for, so their simulations are kept.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from joblib.externals.loky import get_reusable_executor

    threads = str(max(1, (os.cpu_count() or 1) // num_workers))  # as joblib's loky backend
    env = {
        name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    executor = get_reusable_executor(max_workers=num_workers, env=env)
    pending = {executor.submit(_run_chunk, *args, remote=True) for args in tasks}
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            outcomes = [future.result() for future in finished]
            yield from outcomes
            if any(outcome.error is not None for outcome in outcomes):
                running = {future for future in pending if not future.cancel()}
                pending = set()
                for future in running:
                    yield future.result()
    finally:
        for future in pending:
            future.cancel()


def _dask(tasks: list[tuple], num_workers: int, client: Any) -> Iterator[_ChunkOutcome]:
    """Run the chunks on a Dask cluster; after the first failure, cancel what is not done."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise ImportError(
            "backend='dask' needs dask.distributed; install it with "
            "`pip install 'sbi_vi[distributed]'`."
        ) from err
    own = client is None
    if own:
        cluster = LocalCluster(
            n_workers=num_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    elif not isinstance(client, Client):
        raise TypeError(
            f"`client` must be a dask.distributed.Client, got {type(client).__name__}."
        )
    futures = [client.submit(_run_chunk, *args, remote=True, pure=False) for args in tasks]
    seen: set[str] = set()
    try:
        for future in as_completed(futures):
            seen.add(future.key)
            outcome = future.result()
            yield outcome
            if outcome.error is not None:
                done = [f for f in futures if f.status == "finished" and f.key not in seen]
                client.cancel([f for f in futures if f.status != "finished"])
                for other in done:
                    yield other.result()
                return
    finally:
        client.cancel(futures)
        if own:
            client.close()
            cluster.close()


def simulate(
    simulator: Callable[[Tensor], Any],
    prior_or_proposal: Any,
    num_simulations: int,
    *,
    num_workers: int = 1,
    simulation_batch_size: int | None = None,
    seed: int | None = None,
    backend: Literal["joblib", "dask"] = "joblib",
    client: Any = None,
    vectorized: bool | None = None,
    exclude_invalid_x: bool = True,
    show_progress_bar: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Draw θ from ``prior_or_proposal`` and simulate x for each, reproducibly.

    The simulator is either a *batch* simulator, ``theta [B, D] -> x [B, L]`` (``[B]`` is
    read as ``L = 1``), or a *one-at-a-time* simulator, ``theta [D] -> x [L]`` (a scalar is
    read as ``L = 1``). It receives torch tensors and may return tensors, numpy arrays or
    sequences of numbers; numpy code that needs an ``ndarray`` calls ``np.asarray(theta)``.
    Unless ``vectorized`` is given, the kind is detected by calling the simulator once on
    two rows, outside the seeded streams: an output ``[2, ...]`` (or ``[2]`` where one θ
    gives one number) means a batch simulator, anything else (an exception included) means
    one at a time. A one-at-a-time simulator that broadcasts over a batch without raising
    (``theta + torch.randn(L)``) would be read as a batch simulator: pass
    ``vectorized=False`` for it.

    Seeds are described in the module docstring: the same ``seed`` and
    ``simulation_batch_size`` give identical results for any ``num_workers``, ``backend``
    or ``client``.

    Args:
        simulator: The simulator, a picklable callable when it runs on workers (joblib
            pickles lambdas and closures by value).
        prior_or_proposal: Anything with ``sample(sample_shape)`` returning θ of shape
            ``[N, D]`` (or ``[N]``, read as ``D = 1``): a prior, a proposal, a posterior.
        num_simulations: Number of simulations N.
        num_workers: Number of worker processes (joblib ``loky``, or the local Dask
            cluster); 1 runs everything in this process. Ignored when ``client`` is given.
        simulation_batch_size: Rows per chunk, the unit that is seeded and sent to a
            worker, and the batch size of each call of a batch simulator. ``None``:
            ``DEFAULT_BATCH_SIZE_VECTORIZED`` (1000) for a batch simulator,
            ``DEFAULT_BATCH_SIZE_ONE_AT_A_TIME`` (10) for a one-at-a-time simulator.
            Changing it changes the random draws of the simulations (not their law).
        seed: Seed of θ and of every chunk. ``None`` draws one from torch's global
            generator, so ``torch.manual_seed`` makes the call reproducible; with a seed the
            global generators (torch, numpy, ``random``) are left as they were.
        backend: ``"joblib"`` (``loky`` processes when ``num_workers > 1``) or ``"dask"``
            (a ``LocalCluster`` of ``num_workers`` single-threaded processes, created for the
            call and closed after it, unless ``client`` is given).
        client: A ``dask.distributed.Client`` to run the chunks on; implies
            ``backend="dask"``. It is left open.
        vectorized: Whether the simulator takes batches; ``None`` detects it.
        exclude_invalid_x: Drop simulations whose x holds NaN or inf, with a
            :class:`~sbi_vi.errors.SimulationWarning` that counts them; ``False`` keeps them.
        show_progress_bar: Show a tqdm bar over the simulations.

    Returns:
        ``(theta, x)``: θ of shape ``[N', D]`` as the prior returns it and x of shape
        ``[N', L]`` as float32, row ``n`` of x simulated from row ``n`` of θ; ``N' = N``
        unless invalid simulations were dropped.

    Raises:
        SimulationError: If the simulator raises. The message names the θ it failed on; the
            simulations completed before are in ``err.theta`` and ``err.x`` (see
            :class:`SimulationError`), the original exception in ``err.__cause__``.
        ValueError: If an argument is out of range, the prior's samples are not ``[N, D]``,
            or the simulator returns x of the wrong shape or of varying length L.
        TypeError: If ``simulator`` is not callable, ``prior_or_proposal`` has no
            ``sample``, an integer argument is not an integer, or the simulator returns
            something that is not numbers; or if ``simulator`` must run on worker
            processes (``num_workers > 1`` or Dask) but cannot be pickled: the message names
            the simulator and the reason, and says what to do (a module-level function,
            or ``num_workers=1``). Nothing has been simulated then.
        ImportError: If ``backend="dask"`` and dask.distributed is not installed.

    Example:
        >>> from sbi_vi.priors import BoxUniform
        >>> prior = BoxUniform(torch.zeros(2), torch.ones(2))
        >>> def simulator(theta):  # a batch simulator: [B, 2] -> [B, 3]
        ...     return torch.cat([theta, theta.sum(-1, keepdim=True)], -1) + 0.1 * torch.rand(
        ...         theta.shape[0], 3
        ...     )
        >>> theta, x = simulate(simulator, prior, 50, seed=0, show_progress_bar=False)
        >>> theta.shape, x.shape
        (torch.Size([50, 2]), torch.Size([50, 3]))
        >>> torch.equal(x, simulate(simulator, prior, 50, seed=0, show_progress_bar=False)[1])
        True
    """
    if not callable(simulator):
        raise TypeError(f"`simulator` must be callable, got {type(simulator).__name__}.")
    if not callable(getattr(prior_or_proposal, "sample", None)):
        raise TypeError(
            "`prior_or_proposal` must have a `sample(sample_shape)` method (a torch "
            f"Distribution, a prior or a posterior), got {type(prior_or_proposal).__name__}."
        )
    num_simulations = check_positive_int("num_simulations", num_simulations)
    num_workers = check_positive_int("num_workers", num_workers)
    if simulation_batch_size is not None:
        simulation_batch_size = check_positive_int("simulation_batch_size", simulation_batch_size)
    if seed is not None:
        seed = check_positive_int("seed", seed, allow_zero=True)
    backend = check_choice("backend", backend, ("joblib", "dask"))
    if vectorized is not None and not isinstance(vectorized, bool):
        raise TypeError(f"`vectorized` must be True, False or None, got {vectorized!r}.")
    if client is not None:
        backend = "dask"

    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    theta = _draw_theta(prior_or_proposal, num_simulations, seed)
    if vectorized is None:
        vectorized = _detect_vectorized(simulator, theta)
        logger.debug("simulator detected as %s", "batch" if vectorized else "one at a time")
    batch_size = simulation_batch_size or (
        DEFAULT_BATCH_SIZE_VECTORIZED if vectorized else DEFAULT_BATCH_SIZE_ONE_AT_A_TIME
    )

    starts = list(range(0, num_simulations, batch_size))
    tasks = [
        (simulator, theta[s : s + batch_size], _chunk_words(seed, (1, i)), vectorized, i, s)
        for i, s in enumerate(starts)
    ]
    if backend == "dask":
        _check_picklable(simulator, num_workers, backend)
        outcomes = _dask(tasks, num_workers, client)
    elif num_workers > 1 and len(tasks) > 1:
        _check_picklable(simulator, num_workers, backend)
        outcomes = _loky(tasks, num_workers)
    else:
        outcomes = _sequential(tasks)

    rows, x, failure = _collect(outcomes, starts, num_simulations, show_progress_bar)
    if failure is not None and failure.error is not None:
        _raise_failure(failure, failure.error, theta, starts, vectorized, theta[rows], x)
    return _drop_invalid(theta, x, exclude_invalid_x=exclude_invalid_x)


def _collect(
    outcomes: Iterator[_ChunkOutcome], starts: list[int], total: int, show_progress_bar: bool
) -> tuple[Tensor, Tensor, _ChunkOutcome | None]:
    """Gather the chunks' outputs in row order: ``(rows [M], x [M, L], first failure)``."""
    done: dict[int, np.ndarray] = {}
    failure: _ChunkOutcome | None = None
    bar = tqdm(
        total=total, desc="Simulations", unit="sim", disable=not show_progress_bar, leave=False
    )
    with bar, contextlib.closing(outcomes):
        for outcome in outcomes:  # the backends stop soon after a failure
            if outcome.x.shape[0]:
                done[outcome.index] = outcome.x
            if outcome.error is not None and failure is None:
                failure = outcome
            bar.update(outcome.x.shape[0])

    lengths = {i: x.shape[1] for i, x in done.items()}
    if len(set(lengths.values())) > 1:
        first = min(lengths)
        other = next(i for i in sorted(lengths) if lengths[i] != lengths[first])
        raise ValueError(
            f"The simulator returned x with L = {lengths[first]} for theta[{starts[first]}:] "
            f"but L = {lengths[other]} for theta[{starts[other]}:]; every simulation must "
            "give the same L."
        )
    order = sorted(done)
    if not order:
        return torch.zeros(0, dtype=torch.long), torch.empty(0, 0, dtype=torch.float32), failure
    rows = torch.cat([torch.arange(starts[i], starts[i] + done[i].shape[0]) for i in order])
    x = torch.from_numpy(np.concatenate([done[i] for i in order]))
    return rows, x, failure


def _draw_theta(prior: Any, num_simulations: int, seed: int) -> Tensor:
    with _seeded_rngs(_chunk_words(seed, (0,))):
        theta = prior.sample((num_simulations,))
    theta = torch.as_tensor(theta).detach()
    if theta.ndim == 1 and theta.shape[0] == num_simulations:
        theta = theta[:, None]
    if theta.ndim != 2 or theta.shape[0] != num_simulations:
        raise ValueError(
            f"`prior_or_proposal.sample(({num_simulations},))` must return θ of shape "
            f"[{num_simulations}, D], got shape {list(theta.shape)}."
        )
    return theta


def _raise_failure(
    failure: _ChunkOutcome,
    error: BaseException,
    theta: Tensor,
    starts: list[int],
    vectorized: bool,
    done_theta: Tensor,
    done_x: Tensor,
) -> None:
    start = starts[failure.index]
    if vectorized:
        stop = starts[failure.index + 1] if failure.index + 1 < len(starts) else theta.shape[0]
        failed = theta[start:stop]
        index = start
        where = (
            f"the batch theta[{start}:{start + failed.shape[0]}] (first row "
            f"{_format_theta(failed[0])})"
        )
    else:
        index = start + int(failure.failed_row or 0)
        failed = theta[index]
        where = f"theta[{index}] = {_format_theta(failed)}"
    message = (
        f"The simulator raised {type(error).__name__} on {where}: {error}. The "
        f"{done_x.shape[0]} simulations completed before the failure are kept in `err.theta` "
        "and `err.x`."
    )
    raise SimulationError(
        message, theta=done_theta, x=done_x, failed_theta=failed, index=index
    ) from error


def _drop_invalid(theta: Tensor, x: Tensor, *, exclude_invalid_x: bool) -> tuple[Tensor, Tensor]:
    valid = torch.isfinite(x).all(dim=1)
    n_bad = int((~valid).sum())
    if n_bad and exclude_invalid_x:
        message = f"dropped {n_bad} of {x.shape[0]} simulations with NaN or inf in x."
        logger.info(message)
        warnings.warn(message, SimulationWarning, stacklevel=3)
        return theta[valid], x[valid]
    if n_bad:
        logger.info("kept %d of %d simulations with NaN or inf in x.", n_bad, x.shape[0])
    return theta, x
