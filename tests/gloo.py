"""Two gloo ranks in spawned processes, for the data-parallel tests (test_data_parallel.py,
test_diffusion_method.py)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch.multiprocessing as mp


def mark_done(folder: str | Path, rank: int) -> None:
    """Rank `rank` has finished its work and written what it returns (called before the barrier and
    the process group's teardown)."""
    (Path(folder) / f"rank{rank}.done").touch()


def spawn_ranks(fn: Callable, args: tuple, folder: str | Path, nprocs: int = 2) -> None:
    """mp.spawn(fn, args, nprocs), where fn(rank, *args) calls mark_done(folder, rank) once its work
    is done. A rank aborted by SIGABRT after every rank marked its work done died in gloo's teardown
    ("terminate called without an active exception": torch's gloo backend destroying a thread that
    still runs; seen in several CI runs of this project, every time after the work, also with the ranks
    meeting at a barrier before the teardown). The results stand then, with a warning; any other
    failure is raised."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mp.spawn(fn, args=args, nprocs=nprocs, join=True)
    except mp.ProcessExitedException as exc:
        if exc.signal_name != "SIGABRT" or not all((folder / f"rank{r}.done").exists() for r in range(nprocs)):
            raise
        warnings.warn(f"gloo rank {exc.error_index} aborted in the process group's teardown, after every "
                      f"rank had finished its work: {exc}")
