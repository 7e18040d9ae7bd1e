"""Checkpoints of ``LSTMModel`` (and of its quantized form): one ``.npz`` with weights, config and, optionally, a training run.

``save`` writes atomically (temp file in the same folder, fsync, ``os.replace``) so a crash never
damages the previous file; ``load`` validates everything and names the file in its errors. The
model is read and rebuilt through its public state protocol (``config``, ``state_dict``,
``get_extra_state`` and their inverses); a training run is whatever ``Trainer.state_dict()``
returns, stored in the layout documented in :func:`save`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import zipfile
import zlib

import numpy as np

from .._version import __version__
from ..nn import LSTMModel, QuantizedLSTMModel
from ..nn.lstm import variant_options

__all__ = ["save", "load", "FORMAT_VERSION", "MODEL_VERSIONS"]

#: The newest checkpoint layout this eigenlstm reads and writes; ``load`` refuses newer ones.
#: 2 added the checksum (below), 3 quantized models, 4 the LSTM's cell variants (peepholes,
#: cell_clip) in the config, 5 the per-step head (``many_to_many``); version 1 files are read
#: as before.
FORMAT_VERSION = 5
#: The version ``save`` writes for each model class: the oldest that holds it, so that a float
#: model stays readable by eigenlstm releases from before version 3. A model with a cell
#: variant is written as VARIANTS_VERSION, one with a per-step head as MANY_TO_MANY_VERSION:
#: releases that cannot build them refuse them by version.
MODEL_VERSIONS = {"LSTMModel": 2, "QuantizedLSTMModel": 3}
VARIANTS_VERSION = 4
MANY_TO_MANY_VERSION = 5
_MAGIC = "eigenlstm-checkpoint"

# From version 2 the archive's comment (the last bytes of a zip file) is the SHA-256 of every
# byte before it. A zip's CRC-32s cover only the members' data; the digest also covers the
# headers, names and central directory, so that any damaged byte is found, not three in four.
_DIGEST_PREFIX = b"eigenlstm-sha256:"
_DIGEST_LEN = len(_DIGEST_PREFIX) + 64


def _write_archive(f, arrays: dict) -> None:
    """Write ``arrays`` to the open file ``f`` (read-write) as np.savez does, plus the digest."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        # Only the comment's length goes into the bytes before it, so a placeholder of the
        # final length lets the digest of everything else be computed, then written over it.
        zf.comment = b"\0" * _DIGEST_LEN
    end = f.seek(0, os.SEEK_END)
    f.seek(0)
    digest = hashlib.sha256(f.read(end - _DIGEST_LEN)).hexdigest().encode()
    f.seek(end - _DIGEST_LEN)
    f.write(_DIGEST_PREFIX + digest)


def _has_valid_digest(data: bytes) -> bool:
    """Whether ``data`` ends with a digest comment (version 2); ValueError if it does not match."""
    tail = data[-_DIGEST_LEN:]
    if len(data) < _DIGEST_LEN or not tail.startswith(_DIGEST_PREFIX):
        return False
    if hashlib.sha256(data[:-_DIGEST_LEN]).hexdigest().encode() != tail[len(_DIGEST_PREFIX) :]:
        raise ValueError("its SHA-256 checksum does not match its contents")
    return True


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
    # "x+b")`` creates it exclusively with the permissions of an ordinary new file (0o666 minus
    # the umask); reading the umask would mean setting it process-wide, which is neither
    # thread-safe nor interrupt-safe.
    tmp = f = None
    try:
        for _ in range(100):
            tmp = os.path.join(folder, f".{base}.{secrets.token_hex(8)}.tmp")
            try:
                # Not a with block: the handle must exist before the block that writes it, so
                # that an interrupt between open and with still closes and removes it.
                f = open(tmp, "x+b")  # noqa: SIM115
                break
            except FileExistsError:
                tmp = None  # someone else's file: never delete it
        else:
            raise FileExistsError(f"could not create a temp file next to {path}")
        with f:
            _write_archive(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if f is not None:
            f.close()  # already closed after the with block; needed to unlink on Windows
        if tmp is not None:
            with contextlib.suppress(OSError):  # not created yet, or already renamed to path
                os.unlink(tmp)
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


def save(model, path, *, metadata: dict | None = None, training: dict | None = None) -> None:
    """Write ``model`` to ``path`` as a checkpoint, replacing any previous file atomically.

    Parameters
    ----------
    model : LSTMModel or QuantizedLSTMModel
        The model: its config, weights and dropout stream are saved (a quantized model's
        weights as they are stored: int8 or bfloat16, with their scales).
    path : str or os.PathLike
        The file to write (used as given; ``.npz`` is the conventional suffix).
    metadata : dict, optional
        JSON-ready data stored with the model (defaults to ``model.metadata``).
    training : dict, optional
        A training run, as ``Trainer.state_dict()`` returns it (``Trainer.save`` passes it):
        optimizer and schedule state, shuffling RNG, epoch count and history, so that
        ``Trainer.load(path).fit(..., resume=True)`` continues bitwise as if never
        interrupted.

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
    state and the training run's scalars), ``weights/<state_dict key>`` arrays and, with a
    training run, ``optimizer/<buffer>/<state_dict key>`` arrays in torch layout. The zip
    comment is ``eigenlstm-sha256:`` and the SHA-256 (hex) of every byte before it; ``load``
    checks it before reading anything (``numpy.load`` reads the file as any ``.npz``).

    Examples
    --------
    >>> import os, tempfile, eigenlstm as el
    >>> model = el.LSTMModel(3, 8, 1, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> el.save(model, path)
    >>> el.load(path).config() == model.config()
    True
    """
    where = "eigenlstm.save"
    if not isinstance(model, LSTMModel):
        raise TypeError(
            f"{where}: model must be an LSTMModel or a QuantizedLSTMModel, got "
            f"{type(model).__name__}"
        )
    kind = "QuantizedLSTMModel" if isinstance(model, QuantizedLSTMModel) else "LSTMModel"
    if kind == "QuantizedLSTMModel" and training is not None:
        raise ValueError(f"{where}: a quantized model has no training run to save")
    path = os.fspath(path)
    weights = model.state_dict()
    bad = [k for k, v in weights.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(
            f"{where}: refusing to write {path}: weights {bad} hold NaN or infinite values "
            "(the previous file, if any, is left untouched)"
        )
    version = MODEL_VERSIONS[kind]
    if variant_options(model.lstm):
        version = max(version, VARIANTS_VERSION)
    if model.many_to_many:
        version = max(version, MANY_TO_MANY_VERSION)
    meta = {
        "format": _MAGIC,
        "format_version": version,
        "eigenlstm_version": __version__,
        "model": kind,
        "config": model.config(),
        "metadata": model.metadata if metadata is None else metadata,
        # uint64 values as strings: exact in any JSON reader (a quantized model has none)
        "dropout_state": [str(v) for v in model.get_extra_state().get("lstm.dropout_state", ())],
        "training": None,
    }
    arrays = {f"weights/{k}": v for k, v in weights.items()}
    if training is not None:
        opt_sd = training["optimizer"]
        states = opt_sd["state"]  # {buffer: {state_dict key: array}}
        for key, named in states.items():
            arrays.update({f"optimizer/{key}/{name}": v for name, v in named.items()})
        meta["training"] = dict(
            training,
            optimizer={
                "name": opt_sd["name"],
                "hyperparameters": opt_sd["hyperparameters"],
                "step_count": opt_sd["step_count"],
                "state_keys": sorted(states),
            },
        )
    try:
        text = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: metadata must be JSON-serialisable ({exc})") from None
    arrays["meta"] = np.array(text)
    _atomic_write_npz(path, arrays)


def load(path, *, with_training: bool = False):
    """Read a checkpoint written by :func:`save` and return the model.

    Parameters
    ----------
    path : str or os.PathLike
    with_training : bool, default False, keyword-only
        Also return the training run saved with the model (None if there is none), in the
        form ``Trainer.state_dict()`` has: ``Trainer.load(path)`` is the way to resume it.

    Returns
    -------
    LSTMModel or QuantizedLSTMModel, or (model, dict or None) with ``with_training``
        With its weights, ``metadata`` and dropout stream.

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
    >>> el.save(model, path)
    >>> x = np.ones((2, 4, 3))
    >>> bool(np.array_equal(el.load(path).predict(x), model.predict(x)))
    True
    """
    path = os.fspath(path)
    where = "eigenlstm.load"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such checkpoint file: {path}")
    bad = f"{where}: {path} is not a valid eigenlstm checkpoint"
    # Every way a damaged file fails to parse: zipfile reports a damaged header as BadZipFile,
    # RuntimeError ("encrypted") or NotImplementedError ("compression method", a RuntimeError);
    # numpy's .npy reader as ValueError or EOFError.
    damaged = (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        ValueError,
        KeyError,
        OSError,
        UnicodeDecodeError,
        RuntimeError,
    )
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        checked = _has_valid_digest(data)
        z = np.load(io.BytesIO(data), allow_pickle=False)
    except damaged as exc:
        raise ValueError(f"{bad} (corrupted or truncated: {exc})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{bad} (it holds a single .npy array of shape {np.shape(z)}, not an .npz archive)"
        )
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
        if version >= 2 and not checked:
            raise ValueError(f"{bad} (corrupted or truncated: its checksum is missing)")
        try:  # reads every member in full: CRC errors surface here
            arrays = {k: z[k] for k in z.files if k != "meta"}
        except damaged as exc:
            raise ValueError(f"{bad} (corrupted or truncated: {exc})") from exc
    try:
        config = dict(meta["config"])
        kind = meta.get("model", "LSTMModel")
        if kind not in MODEL_VERSIONS:
            raise ValueError(f"model must be one of {sorted(MODEL_VERSIONS)}, got {kind!r}")
        model = (
            QuantizedLSTMModel(**config) if kind == "QuantizedLSTMModel" else LSTMModel(**config)
        )
        weights = {k[len("weights/") :]: v for k, v in arrays.items() if k.startswith("weights/")}
        model.load_state_dict(weights)
        if kind == "LSTMModel":
            model.set_extra_state({"lstm.dropout_state": [int(v) for v in meta["dropout_state"]]})
        model.metadata = meta.get("metadata") or {}
        training = meta.get("training")
        if training is not None:
            ometa = training["optimizer"]
            states = {}
            for key in ometa["state_keys"]:
                prefix = f"optimizer/{key}/"
                states[key] = {
                    k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)
                }
            training = dict(
                training,
                optimizer={
                    "name": ometa["name"],
                    "hyperparameters": ometa["hyperparameters"],
                    "step_count": ometa["step_count"],
                    "state": states,
                },
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{bad} (inconsistent contents: {exc})") from exc
    return (model, training) if with_training else model
