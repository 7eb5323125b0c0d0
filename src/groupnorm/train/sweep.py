"""Run a list of training runs: skip finished ones, resume interrupted ones, keep every core busy.

On a CPU, small models train faster as several single-threaded runs side by side than as
one run on all cores (measured on 2 cores: 2 runs x 1 thread give ~1.7x the images/s of
1 run x 2 threads at 1-2 images per device), so ``jobs`` runs go at once, each with
cores/jobs threads. Progress is read back from the runs' metrics.jsonl, which gives an
ETA for the whole sweep.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from groupnorm.train import records
from groupnorm.train.config import RunConfig
from groupnorm.train.engine import check_configs, run_cost, run_dir_of, train_run
from groupnorm.train.records import RunBusy

__all__ = ["SweepFailed", "SweepProgress", "default_jobs", "run_sweep"]


class SweepFailed(RuntimeError):
    """Some runs of a sweep raised; the others finished."""


def default_jobs() -> int:
    """One single-threaded run per core on a CPU; one run at a time on a GPU or under torchrun."""
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    return max(1, os.cpu_count() or 1)


class SweepProgress:
    """Fraction of the sweep's cost done, read from the runs' metrics files, and an ETA."""

    def __init__(self, configs: Sequence[RunConfig], runs_dir: Path, cost: Callable[[Any], float] = run_cost) -> None:
        self.configs, self.runs_dir, self.cost = list(configs), Path(runs_dir), cost
        self.total = sum(cost(c) for c in self.configs) or 1.0
        self.start_done = self.done()
        self.t0 = time.perf_counter()

    def done(self) -> float:
        total = 0.0
        for c in self.configs:
            run_dir = run_dir_of(c, self.runs_dir)
            if (run_dir / records.RESULT).is_file():
                total += self.cost(c)
            else:
                total += self.cost(c) * min(len(records.read_metrics(run_dir)), c.epochs) / c.epochs
        return total

    def line(self) -> str:
        return self.status()[1]

    def status(self) -> tuple[int, str]:
        """(percent done, a progress line)."""
        done = self.done()
        finished = sum((run_dir_of(c, self.runs_dir) / records.RESULT).is_file() for c in self.configs)
        rate = (done - self.start_done) / max(time.perf_counter() - self.t0, 1e-9)
        eta = f"ETA {_duration((self.total - done) / rate)}" if rate > 0 else "ETA --"
        pct = int(100 * done / self.total)
        return pct, f"sweep: {finished}/{len(self.configs)} runs finished, {pct}% of the work, {eta}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _progress_bar():
    """A terminal bar over the sweep's work (percent), with tqdm's ETA."""
    from tqdm import tqdm

    return tqdm(
        total=100,
        unit="%",
        desc="sweep",
        file=sys.stderr,
        bar_format="{l_bar}{bar}| {n}% [{elapsed}<{remaining}{postfix}]",
    )


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):  # die with the parent, so a killed sweep leaves no orphan training
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)


def _run_one(cfg: RunConfig, runs_dir: str) -> dict[str, Any]:
    return train_run(cfg, runs_dir, progress=False)


def run_sweep(
    configs: Sequence[RunConfig],
    runs_dir: Path | str,
    *,
    jobs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any] | None]:
    """Train every config not yet finished (any task); return their results in order (None where one failed).

    Every config is checked by its task before anything trains. ``jobs``: runs at once (default: one per
    core on a CPU). Raises SweepFailed after all runs have been tried if any raised.
    """
    log = log or (lambda msg: print(msg, flush=True))
    runs_dir = Path(runs_dir)
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive int (runs at once); got {jobs!r}")
    check_configs(list(configs), runs_dir)
    jobs = max(1, min(jobs or default_jobs(), len(configs) or 1))
    cost = run_cost
    tracker = SweepProgress(configs, runs_dir, cost)
    finished = sum((run_dir_of(c, runs_dir) / records.RESULT).is_file() for c in configs)
    log(f"sweep: {len(configs)} runs under {runs_dir}, {finished} already finished; {jobs} at a time")
    results: list[dict[str, Any] | None] = [None] * len(configs)
    failures: list[str] = []

    if jobs == 1:
        for i, cfg in enumerate(configs):
            try:
                results[i] = train_run(cfg, runs_dir)
            except RunBusy as e:
                log(f"sweep: skipping {cfg.id}: {e}")
            except Exception as e:  # keep going; report at the end
                failures.append(f"{cfg.id}: {type(e).__name__}: {e}")
                log(f"sweep: run {cfg.id} failed:\n{traceback.format_exc()}")
            log(tracker.line())
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        order = sorted(range(len(configs)), key=lambda i: -cost(configs[i]))  # longest first packs best
        with ProcessPoolExecutor(
            jobs, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(_run_one, configs[i].replace(threads=threads), str(runs_dir)): i for i in order}
            pending, last = set(futures), -1
            bar = _progress_bar() if sys.stderr.isatty() else None
            while pending:
                done, pending = wait(pending, timeout=10, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = futures[fut]
                    try:
                        results[i] = fut.result()
                    except RunBusy as e:
                        log(f"sweep: skipping {configs[i].id}: {e}")
                    except Exception as e:
                        failures.append(f"{configs[i].id}: {type(e).__name__}: {e}")
                        log(f"sweep: run {configs[i].id} failed: {type(e).__name__}: {e}")
                pct, line = tracker.status()
                if bar is not None:
                    bar.set_postfix_str(line.split(", ", 1)[0].removeprefix("sweep: "), refresh=False)
                    bar.update(pct - bar.n)
                elif pct != last:  # a line whenever some run finishes an epoch
                    log(line)
                    last = pct
            if bar is not None:
                bar.close()
    if failures:
        raise SweepFailed(f"{len(failures)} of {len(configs)} runs failed: " + "; ".join(failures))
    return results
