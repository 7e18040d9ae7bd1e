"""Data-parallel training over MPI: what ``Trainer.fit(distributed="mpi")`` asks of the ranks.

Each rank holds the whole model and trains on its shard of every global batch; their gradients
are summed with ``Allreduce`` so that every rank applies the same update. This module holds
the communicator and the collective steps (shards, sums, broadcasts, agreement on errors, the
abort); the loop that calls them is trainer.py's. mpi4py (the ``eigenlstm[mpi]`` extra) is
imported only when a run asks for it.
"""

from __future__ import annotations

import builtins
import sys
import time
import traceback
import zlib
from typing import Any, Callable

import numpy as np

__all__ = ["MPIGroup", "agreed", "connect"]

# Bytes per non-blocking all-reduce: large enough that a bucket's latency (microseconds) is
# small next to its transfer, small enough that several are in flight at once.
BUCKET_BYTES = 1 << 22

# An exception that another rank has already printed carries this attribute; the hook that
# connect() installs does not print it a second time (the process still exits with status 1).
_REPORTED_ELSEWHERE = "_eigenlstm_reported_by_rank"
# Every rank raises an exception that ``MPIGroup.agree`` raised, so none needs to abort the job.
_AGREED = "_eigenlstm_agreed"


def agreed(error: BaseException) -> bool:
    """Is ``error`` raised on every rank (by ``MPIGroup.agree``)?"""
    return getattr(error, _AGREED, False)


def _quiet_excepthook(previous: Callable) -> Callable:
    def hook(kind, value, tb):
        if getattr(value, _REPORTED_ELSEWHERE, None) is None:
            previous(kind, value, tb)

    hook.eigenlstm_quiet = True  # type: ignore[attr-defined]
    return hook


def connect(where: str, distributed) -> MPIGroup | None:
    """The group a ``distributed=`` argument names: None for one process, or MPI's world.

    Raises
    ------
    ValueError
        On anything but None or ``"mpi"``.
    ModuleNotFoundError
        If mpi4py is not installed.
    """
    if distributed is None:
        return None
    if distributed != "mpi":
        raise ValueError(f"{where}: distributed must be None or 'mpi', got {distributed!r}")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"{where}: distributed='mpi' needs mpi4py and an MPI library: "
            "pip install 'eigenlstm[mpi]' (mpi4py and MPICH)"
        ) from exc
    if not getattr(sys.excepthook, "eigenlstm_quiet", False):
        sys.excepthook = _quiet_excepthook(sys.excepthook)
    return MPIGroup(MPI.COMM_WORLD, MPI)


def _rank_seed(seed: int, rank: int) -> int:
    """A dropout stream seed of its own for ``rank`` (rank 0 keeps ``seed``): splitmix64's
    finaliser of seed + rank * golden ratio, so that nearby seeds give unrelated streams."""
    if rank == 0:
        return seed
    z = (seed + rank * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def _builtin_base(error: BaseException) -> str:
    """The name of the nearest built-in class of ``error`` (ValueError for a ValueError of
    the package's own): what the other ranks raise in its place, so that the same ``except``
    clauses catch it there."""
    return next(k.__name__ for k in type(error).__mro__ if getattr(builtins, k.__name__, None) is k)


class MPIGroup:
    """The ranks of one training job, with the collective steps of the training loop.

    Every method is collective unless it says otherwise: every rank calls it, in the same
    order, or the job waits.

    Attributes
    ----------
    rank, size : int
        This process's rank and the number of ranks.
    """

    def __init__(self, comm, mpi) -> None:
        self.comm = comm
        self._mpi = mpi
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self._stream_seeds: dict[str, int] = {}  # rank 0's dropout seeds, by extra-state key

    def __repr__(self) -> str:
        return f"MPIGroup(rank={self.rank}, size={self.size})"

    # ---- data ------------------------------------------------------------------------------
    def shard(self, n: int) -> slice:
        """This rank's rows of a batch of ``n`` (not collective): contiguous, the first
        ``n % size`` ranks one row more, as ``np.array_split``. A rank may get none."""
        q, r = divmod(n, self.size)
        lo = self.rank * q + min(self.rank, r)
        return slice(lo, lo + q + (self.rank < r))

    def first(self, value: Any) -> Any:
        """The value of the lowest rank whose ``value`` is not None, or None if none has one
        (a picklable object: a stop request, a reason)."""
        return next((v for v in self.comm.allgather(value) if v is not None), None)

    def sum(self, values) -> np.ndarray:
        """The element-wise sum over ranks of a few float64 values (statistics, not gradients)."""
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, out, op=self._mpi.SUM)
        return out

    def allreduce_(self, arrays: list[np.ndarray]) -> None:
        """Sum each array over ranks, in place: non-blocking all-reduces of at most
        ``BUCKET_BYTES`` each, all in flight together, then waited for.

        Every rank ends with the same bits: MPI reduces each element either once and sends
        the result to all, or on every rank in orders that differ only by swapping the two
        operands of an addition, which IEEE addition does not see. ``Trainer.fit`` checks it
        after every epoch (``check_same``).
        """
        requests = []
        for a in arrays:
            flat = a.reshape(-1)  # a view: the arrays are contiguous (optimizer slots)
            if not np.shares_memory(flat, a):
                raise ValueError("MPIGroup.allreduce_: arrays must be contiguous")
            step = max(1, BUCKET_BYTES // flat.itemsize)
            for s in range(0, flat.size, step):
                requests.append(
                    self.comm.Iallreduce(self._mpi.IN_PLACE, flat[s : s + step], op=self._mpi.SUM)
                )
        self._mpi.Request.Waitall(requests)

    # ---- state -----------------------------------------------------------------------------
    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        return self.comm.bcast(value, root=0)

    def seed_streams(self, model) -> None:
        """Give each rank its own dropout stream (not collective): rank r > 0 draws from
        ``_rank_seed(seed, r)`` at the same counter, so that shards of one batch do not share
        masks. Rank 0 keeps the model's own stream, which is what checkpoints save."""
        if self.rank == 0:
            return
        state = model.get_extra_state()
        for key, value in state.items():
            if key.split(".")[-1] == "dropout_state":
                self._stream_seeds[key] = int(value[0])
                state[key] = [_rank_seed(int(value[0]), self.rank), int(value[1])]
        model.set_extra_state(state)

    def unseed_streams(self, model) -> None:
        """Undo ``seed_streams`` (not collective): rank 0's seeds again, at the counters the
        streams reached, which are rank 0's too (every rank takes one per training forward,
        however few rows its shard has)."""
        if not self._stream_seeds:
            return
        state = model.get_extra_state()
        for key, seed in self._stream_seeds.items():
            state[key] = [seed, int(state[key][1])]
        model.set_extra_state(state)
        self._stream_seeds.clear()

    def check_same(self, where: str, arrays: list[np.ndarray]) -> None:
        """RuntimeError on every rank unless every rank holds the same bytes in ``arrays``."""
        crc = 0
        for a in arrays:
            crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
        crcs = self.comm.allgather(crc)
        if len(set(crcs)) > 1:
            raise RuntimeError(
                f"{where}: the weights differ between ranks (CRC-32 by rank: {crcs}); the "
                "ranks did not apply the same updates"
            )

    # ---- errors ----------------------------------------------------------------------------
    def agree(self, error: BaseException | None) -> None:
        """If any rank failed, raise on every rank; otherwise return.

        The lowest failing rank raises its own exception; the others raise one of the same
        type and message that is not printed again (see ``connect``), so that an error in the
        data, which every rank usually meets, is reported once, not once per rank.
        """
        said = None if error is None else (_builtin_base(error), str(error))
        errors = self.comm.allgather(said)
        failed = [r for r, e in enumerate(errors) if e is not None]
        if not failed:
            return
        first = failed[0]
        if self.rank == first and error is not None:
            setattr(error, _AGREED, True)
            raise error
        name, message = errors[first]
        text = f"rank {first}: {message}" if first else message
        try:
            exc = getattr(builtins, name)(text)
        except TypeError:  # a built-in that takes more than a message (UnicodeDecodeError)
            exc = RuntimeError(f"{name}: {text}")
        setattr(exc, _REPORTED_ELSEWHERE, first)
        setattr(exc, _AGREED, True)
        raise exc

    def on_root(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on rank 0 while the others wait; an exception there is raised on
        every rank (printed once). Returns rank 0's result on rank 0, None elsewhere."""
        error = result = None
        if self.rank == 0:
            try:
                result = action()
            except Exception as exc:
                error = exc
        self.agree(error)
        return result

    def abort(self, exc: BaseException, code: int = 1) -> None:
        """End the whole job now (not collective): print which rank failed and why, then
        ``MPI_Abort``, which stops every rank, including those waiting in a collective for
        this one. Never returns."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        stream = sys.__stderr__ or sys.stderr
        stream.write(
            f"eigenlstm: rank {self.rank} of {self.size} failed, stopping every rank: "
            f"{type(exc).__name__}: {exc}\n{text}"
        )
        stream.flush()
        # The launcher forwards each rank's output through a pipe, and MPI_Abort has it tear
        # the job down at once: give it a moment to read the message first (on a busy
        # machine it was sometimes missing from the job's output).
        time.sleep(0.25)
        self.comm.Abort(code)
