"""Checkpoints of ``LSTMModel``: one ``.npz`` with weights, config and training state.

``save`` writes atomically (temp file in the same folder, fsync, ``os.replace``) so a crash never
damages the previous file; ``load`` validates everything and names the file in its errors.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
import zlib
from typing import Optional

import numpy as np

__all__ = ["save", "load", "FORMAT_VERSION"]

#: Version of the checkpoint layout written by this eigenlstm; ``load`` refuses newer ones.
FORMAT_VERSION = 1
_MAGIC = "eigenlstm-checkpoint"


def _atomic_write_npz(path: str, arrays: dict) -> None:
    """Write ``arrays`` as an uncompressed .npz at exactly ``path``, atomically.

    The data goes to a hidden temp file in the same folder, is fsynced, then renamed over
    ``path``: readers see the old file or the new one, never a mix. Any exception on the way,
    ``KeyboardInterrupt`` included, removes the temp file and leaves ``path`` untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    # ``tmp`` is named before the file exists, so a Ctrl-C landing anywhere after its creation
    # (even between ``open`` returning and the assignment) still finds it to delete. ``open(...,
    # "xb")`` creates it exclusively with the permissions of an ordinary new file (0o666 minus
    # the umask); reading the umask would mean setting it process-wide, which is neither
    # thread-safe nor interrupt-safe.
    tmp = f = None
    try:
        for _ in range(100):
            tmp = os.path.join(folder, f".{base}.{secrets.token_hex(8)}.tmp")
            try:
                f = open(tmp, "xb")
                break
            except FileExistsError:
                tmp = None  # someone else's file: never delete it
        else:
            raise FileExistsError(f"could not create a temp file next to {path}")
        with f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if f is not None:
            f.close()  # already closed after the with block; needed to unlink on Windows
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # not created yet, or already renamed to path
                pass
        raise
    try:  # make the rename itself durable (POSIX; not possible on Windows)
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save(model, path, *, metadata: Optional[dict] = None) -> None:
    """Write ``model`` to ``path`` as a checkpoint, replacing any previous file atomically.

    Parameters
    ----------
    model : LSTMModel
        The model; if it has been trained with ``fit``, its optimizer and schedule state,
        shuffling RNG, dropout stream, epoch count and history are saved too, so that
        ``load(path).fit(..., resume=True)`` continues bitwise as if never interrupted.
    path : str or os.PathLike
        The file to write (used as given; ``.npz`` is the conventional suffix).
    metadata : dict, optional
        JSON-ready data stored with the model (defaults to ``model.metadata``).

    Raises
    ------
    ValueError
        If a weight is NaN or infinite (a diverged model never replaces a good checkpoint),
        or ``metadata`` is not JSON-serialisable.
    OSError
        If the folder is not writable; the previous file is then untouched.

    Notes
    -----
    The file is never half written: the data goes to a hidden temp file in the same folder
    (``.<name>.<random>.tmp``), is fsynced and renamed over ``path`` with ``os.replace``. An
    error or a ``KeyboardInterrupt`` at any point before the rename removes the temp file and
    leaves the previous file byte for byte as it was; after the rename the new file is
    complete.

    The ``.npz`` holds ``meta`` (a JSON string: format version, config, metadata, dropout
    state and the training state's scalars), ``weights/<state_dict key>`` arrays and, after
    training, ``optimizer/<buffer>/<state_dict key>`` arrays in torch layout.

    Examples
    --------
    >>> import os, tempfile, eigenlstm as el
    >>> model = el.LSTMModel(3, 8, 1, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> el.save(model, path)
    >>> el.load(path).config() == model.config()
    True
    """
    from .model import LSTMModel

    where = "eigenlstm.save"
    if not isinstance(model, LSTMModel):
        raise TypeError(f"{where}: model must be an LSTMModel, got {type(model).__name__}")
    path = os.fspath(path)
    weights = model.state_dict()
    bad = [k for k, v in weights.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"{where}: refusing to write {path}: weights {bad} hold NaN or infinite values "
            "(the previous file, if any, is left untouched)"
        )
    from . import __version__

    meta = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "eigenlstm_version": __version__,
        "model": "LSTMModel",
        "config": model.config(),
        "metadata": model.metadata if metadata is None else metadata,
        "dropout_state": [str(v) for v in model.lstm.dropout_state],  # uint64: keep exact
        "training": None,
    }
    arrays = {f"weights/{k}": v for k, v in weights.items()}
    state = model._train_state
    if state is not None:
        opt_sd = state.optimizer.state_dict()
        keys = sorted(opt_sd["state"][0]) if opt_sd["state"] else []
        if any(sorted(s) != keys for s in opt_sd["state"]):
            raise ValueError(f"{where}: the optimizer's per-parameter states differ in keys")
        for key in keys:
            named = model._named_arrays([s[key] for s in opt_sd["state"]])
            arrays.update({f"optimizer/{key}/{name}": v for name, v in named.items()})
        meta["training"] = {
            "optimizer": {"name": opt_sd["name"], "hyperparameters": opt_sd["hyperparameters"],
                          "step_count": opt_sd["step_count"], "state_keys": keys},
            "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
            "rng_state": state.rng.bit_generator.state,
            "epoch": state.epoch,
            "history": state.history.to_dict(),
            "settings": state.settings,
        }
    try:
        text = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: metadata must be JSON-serialisable ({exc})") from None
    arrays["meta"] = np.array(text)
    _atomic_write_npz(path, arrays)


def load(path):
    """Read a checkpoint written by :func:`save` and return the model, ready to use or resume.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    LSTMModel
        With its weights, ``metadata``, dropout stream and, if the checkpoint was saved after
        training, its optimizer, schedule, RNG and history: call ``fit(..., resume=True)``
        to continue training exactly where it stopped.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, corrupted, not an eigenlstm checkpoint, or written by a
        newer format version; the message names the file.

    Examples
    --------
    >>> import os, tempfile, numpy as np, eigenlstm as el
    >>> model = el.LSTMModel(3, 8, 1, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> model.save(path)
    >>> x = np.ones((2, 4, 3))
    >>> bool(np.array_equal(el.load(path).predict(x), model.predict(x)))
    True
    """
    from .callbacks import History
    from .model import LSTMModel, _TrainState
    from . import optim as _optim

    path = os.fspath(path)
    where = "eigenlstm.load"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such checkpoint file: {path}")
    bad = f"{where}: {path} is not a valid eigenlstm checkpoint"
    # Every way a damaged file fails to parse: zipfile reports a damaged header as BadZipFile,
    # RuntimeError ("encrypted") or NotImplementedError ("compression method", a RuntimeError);
    # numpy's .npy reader as ValueError or EOFError.
    damaged = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, OSError,
               UnicodeDecodeError, RuntimeError)
    try:
        z = np.load(path, allow_pickle=False)
    except damaged as exc:
        raise ValueError(f"{bad} (corrupted or truncated: {exc})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{bad} (it holds a single .npy array of shape {np.shape(z)}, not an "
                         ".npz archive)")
    with z:
        try:
            if "meta" not in z.files:
                raise ValueError("it has no 'meta' entry")
            # The header before anything else: a newer format may hold entries this version
            # cannot read, and then the useful message is "upgrade", not "corrupted".
            meta = json.loads(str(z["meta"][()]))
            if not isinstance(meta, dict) or meta.get("format") != _MAGIC:
                raise ValueError("its 'meta' entry is not an eigenlstm header")
            version = meta.get("format_version")
            if not isinstance(version, int):
                raise ValueError(f"format_version must be an int, got {version!r}")
        except damaged as exc:
            raise ValueError(f"{bad} (corrupted or truncated: {exc})") from exc
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{where}: {path} has checkpoint format version {version}, newer than version "
                f"{FORMAT_VERSION} that this eigenlstm reads; upgrade eigenlstm to load it"
            )
        try:  # reads every member in full: CRC errors surface here
            arrays = {k: z[k] for k in z.files if k != "meta"}
        except damaged as exc:
            raise ValueError(f"{bad} (corrupted or truncated: {exc})") from exc
    try:
        config = dict(meta["config"])
        model = LSTMModel(**config)
        weights = {k[len("weights/"):]: v for k, v in arrays.items() if k.startswith("weights/")}
        model.load_state_dict(weights)
        model.lstm.set_dropout_state(tuple(int(v) for v in meta["dropout_state"]))
        model.metadata = meta.get("metadata") or {}
        training = meta.get("training")
        if training is not None:
            ometa = training["optimizer"]
            states = [{} for _ in model.parameters()]
            for key in ometa["state_keys"]:
                prefix = f"optimizer/{key}/"
                named = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
                for i, arr in enumerate(model._flat_arrays(named)):
                    states[i][key] = arr
            opt = _optim.optimizer_from_state_dict(model, {
                "name": ometa["name"], "hyperparameters": ometa["hyperparameters"],
                "step_count": ometa["step_count"], "state": states})
            sched = None
            if training["scheduler"] is not None:
                sched = _optim.scheduler_from_state_dict(opt, training["scheduler"])
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = training["rng_state"]
            h = training["history"]
            history = History(h["history"], h["epoch"], h.get("stop_reason"))
            model._train_state = _TrainState(opt, sched, rng, history, int(training["epoch"]),
                                             dict(training["settings"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{bad} (inconsistent contents: {exc})") from exc
    return model
