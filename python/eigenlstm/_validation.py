"""Argument checks shared by every public function of the package: each check is written once.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong
value) with one message format, ``"<where>: <name> must be <expected>, got <given>"``, where
``where`` is the public function (``LSTM.forward``); none of them modifies anything.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "as_array",
    "as_real_array",
    "check_shape",
    "check_positive_int",
    "resolve_dtype",
    "check_lengths",
    "check_seed",
    "new_seed",
    "check_float",
    "check_keys",
    "check_variants",
    "engine_variants",
    "VARIANT_DEFAULTS",
]

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(where: str, dtype) -> np.dtype:
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise TypeError.

    ``None`` means float32, torch's default dtype (``np.dtype(None)`` would be float64).
    """
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _SUPPORTED:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dt}")
    return dt


def check_positive_int(where: str, name: str, value, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= minimum (bools are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return int(value)


def as_real_array(where: str, name: str, value, dtype: np.dtype) -> np.ndarray:
    """Convert ``value`` to an ndarray of ``dtype``, refusing non-real dtypes.

    Integer, boolean and floating inputs are converted (as torch converts on ``.to(dtype)``);
    complex, object, string and other dtypes raise TypeError rather than being cast.
    """
    if type(value) is np.ndarray and value.dtype == dtype:  # the hot path: nothing to do
        return value
    arr = as_array(where, name, value)
    kind = arr.dtype.kind
    if kind not in "fiub":
        raise TypeError(
            f"{where}: {name} must hold real numbers (float or int), got dtype {arr.dtype}"
        )
    return arr.astype(dtype, copy=False)


def as_array(where: str, name: str, value) -> np.ndarray:
    """``np.asarray(value)``, with the two torch inputs NumPy cannot take said plainly.

    A tensor that requires grad is detached (eigenlstm computes its own gradients; torch's
    would not flow through NumPy anyway). A ``PackedSequence`` is refused with what to pass
    instead: NumPy would fail on it with "setting an array element with a sequence".
    """
    kind = type(value)
    if kind.__module__.startswith("torch"):
        if kind.__name__ == "PackedSequence":
            raise TypeError(
                f"{where}: {name} must be an array, got a torch PackedSequence; pass the padded "
                "batch and its lengths instead (x, lengths = "
                "torch.nn.utils.rnn.pad_packed_sequence(packed), then lengths=lengths)"
            )
        if getattr(value, "requires_grad", False):
            value = value.detach()
    return np.asarray(value)


def check_pair(where: str, name: str, expected: str, value) -> None:
    """Raise TypeError unless ``value`` is a tuple (or list) of two items; ``expected`` names
    them, e.g. ``"(h0, c0)"``."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{where}: {name} must be a tuple {expected}, got {type(value).__name__}")
    if len(value) != 2:
        raise TypeError(
            f"{where}: {name} must be a tuple {expected}, got a {type(value).__name__} of "
            f"length {len(value)}"
        )


def check_shape(where: str, name: str, arr: np.ndarray, expected: tuple) -> None:
    """Raise ValueError unless ``arr.shape == expected``."""
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(
            f"{where}: {name} must have shape {tuple(expected)}, got {tuple(arr.shape)}"
        )


def check_lengths(
    where: str, name: str, lengths, N: int, T: int | None, *, minimum: int = 0
) -> np.ndarray:
    """Return ``lengths`` as contiguous int64 of shape (N,), every value in [minimum, T].

    ``minimum`` is 0 for an LSTM (an empty sequence keeps its initial state) and 1 where the
    output is read at each sequence's last step. ``T=None`` checks the kind and shape only,
    for a caller that leaves the range to the module it feeds.
    """
    arr = as_array(where, name, lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name} must be integers, got dtype {arr.dtype}")
    if arr.shape != (N,):
        raise ValueError(f"{where}: {name} must have shape ({N},), got {arr.shape}")
    if T is not None and N and (arr.min() < minimum or arr.max() > T):
        bad = arr[(arr < minimum) | (arr > T)][0]
        why = " (each sequence needs a last step)" if minimum > 0 else " (T)"
        raise ValueError(f"{where}: {name} must be in [{minimum}, {T}]{why}, got {bad}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def new_seed() -> int:
    """A fresh non-negative 63-bit seed from the operating system's entropy."""
    return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))


def check_seed(where: str, seed) -> int:
    """Return ``seed`` as an int, a fresh one if None; a seed is a non-negative int.

    Raises TypeError for a value that is not an int (bools included), ValueError for a
    negative one.
    """
    if seed is None:
        return new_seed()
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{where}: seed must be a non-negative int or None, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{where}: seed must be a non-negative int or None, got {seed}")
    return int(seed)


def check_float(where: str, name: str, value, low=0.0, high=None, high_open=False) -> float:
    """Return ``value`` as a finite float in [low, high] (or [low, high) if ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a float, got {type(value).__name__} {value!r}")
    v = float(value)
    too_high = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or v < low or too_high:
        bracket = ")" if high_open else "]"
        rng = f"[{low}, {high}{bracket}" if high is not None else f">= {low}"
        raise ValueError(f"{where}: {name} must be in {rng}, got {value!r}")
    return v


def check_keys(where: str, state, expected, prefix: str = "") -> None:
    """Raise ValueError naming the missing and the unexpected keys of ``state``.

    ``expected`` holds the keys a state dict must have (relative to ``prefix``, which the
    message puts back in front of each key, as the caller's caller named them).
    """
    missing = sorted(prefix + k for k in expected if k not in state)
    extra = sorted(prefix + k for k in state if k not in expected)
    if missing or extra:
        parts = ([f"missing keys {missing}"] if missing else []) + (
            [f"unexpected keys {extra}"] if extra else []
        )
        raise ValueError(f"{where}: " + "; ".join(parts))


#: The tensor kinds of the layer norms' gains and shifts (``LSTM(layer_norm=True)``), in
#: state_dict order after each layer's and direction's other tensors.
LAYER_NORM_KINDS = (
    "layer_norm_ih_weight",
    "layer_norm_ih_bias",
    "layer_norm_hh_weight",
    "layer_norm_hh_bias",
    "layer_norm_c_weight",
    "layer_norm_c_bias",
)

#: The cell-variant keywords of eigenlstm.LSTM and their defaults (each off).
VARIANT_DEFAULTS = {
    "cifg": False,
    "peepholes": False,
    "cell_clip": None,
    "proj_clip": None,
    "recurrent_dropout": 0.0,
    "weight_drop": 0.0,
    "zoneout": 0.0,
    "layer_norm": False,
}


def _probability(where: str, name: str, value, *, closed: bool) -> float:
    """``value`` as a float in [0, 1] (``closed``) or [0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a float, got {type(value).__name__} {value!r}")
    p = float(value)
    if not (0.0 <= p <= 1.0 if closed else 0.0 <= p < 1.0):
        raise ValueError(f"{where}: {name} must be in [0, 1{']' if closed else ')'}, got {value!r}")
    return p


def check_variants(where: str, proj_size: int, **options) -> dict:
    """The cell-variant keywords (VARIANT_DEFAULTS; those not given take their default),
    checked and normalised: ``cifg``, ``peepholes`` and ``layer_norm`` bools; ``cell_clip`` and ``proj_clip`` None or a
    finite float > 0, ``proj_clip`` only with ``proj_size > 0``; ``recurrent_dropout`` and
    ``weight_drop`` in [0, 1); ``zoneout`` a float in [0, 1] or a pair ``(z_c, z_h)`` of them
    (a float when both are equal). Errors name the option, the expected and the given value.
    """
    unknown = sorted(set(options) - set(VARIANT_DEFAULTS))
    if unknown:
        raise TypeError(
            f"{where}: unexpected options {unknown}; cell variants: {list(VARIANT_DEFAULTS)}"
        )
    out = {**VARIANT_DEFAULTS, **options}
    for name in ("cifg", "peepholes", "layer_norm"):
        flag = out[name]
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{where}: {name} must be a bool, got {type(flag).__name__} {flag!r}")
        out[name] = bool(flag)
    for name in ("cell_clip", "proj_clip"):
        value = out[name]
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"{where}: {name} must be a float or None, got {type(value).__name__} {value!r}"
            )
        clip = float(value)
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(
                f"{where}: {name} must be a finite float > 0, or None (no clipping), got {value!r}"
            )
        out[name] = clip
    if out["proj_clip"] is not None and proj_size == 0:
        raise ValueError(
            f"{where}: proj_clip clips the projection, so it needs proj_size > 0; got "
            f"proj_clip={out['proj_clip']!r} with proj_size=0"
        )
    for name in ("recurrent_dropout", "weight_drop"):
        out[name] = _probability(where, name, out[name], closed=False)
    z = out["zoneout"]
    if isinstance(z, (tuple, list)):
        if len(z) != 2:
            raise ValueError(f"{where}: zoneout must be a float or a pair (z_c, z_h), got {z!r}")
        z = (
            _probability(where, "zoneout[0] (z_c)", z[0], closed=True),
            _probability(where, "zoneout[1] (z_h)", z[1], closed=True),
        )
        out["zoneout"] = z[0] if z[0] == z[1] else z
    else:
        out["zoneout"] = _probability(where, "zoneout", z, closed=True)
    return out


def engine_variants(options: dict) -> dict:
    """The engine's keyword arguments for checked variant options (``check_variants``): the
    clips 0 when off, zoneout split into ``zoneout_c`` and ``zoneout_h``."""
    z = options["zoneout"]
    z_c, z_h = z if isinstance(z, tuple) else (z, z)
    return {
        "cifg": options["cifg"],
        "peepholes": options["peepholes"],
        "cell_clip": options["cell_clip"] or 0.0,
        "proj_clip": options["proj_clip"] or 0.0,
        "recurrent_dropout": options["recurrent_dropout"],
        "weight_drop": options["weight_drop"],
        "zoneout_c": z_c,
        "zoneout_h": z_h,
        "layer_norm": options["layer_norm"],
    }
