"""``eigenlstm.keras``: read Keras models of LSTM/Bidirectional/Dense layers, and write them back.

Reads Keras 3 ``.keras`` archives and legacy ``.h5`` files with h5py, ``zipfile`` and ``json``
only (neither Keras nor TensorFlow is imported), and writes ``.keras`` archives that
``keras.saving.load_model`` opens. The layers are lstm.py, linear.py; the containers model.py
(``LSTMModel``) and sequential.py (``Sequential``).
"""
# Sizes: I input features, u = H units of a Keras LSTM, G = 4H gate columns, O Dense units.
#
# Weight layout: a Keras LSTM cell holds kernel (I, 4H), recurrent_kernel (H, 4H) and one bias
# (4H,), with the gate columns in order i, f, c, o. torch/eigenlstm hold weight_ih (4H, I) and
# weight_hh (4H, H) with rows in order i, f, g, o, and two biases that are added. The gate
# orders agree (Keras's c is torch's g), so the mapping is a transpose:
#   weight_ih = kernel.T, weight_hh = recurrent_kernel.T, bias_ih = bias, bias_hh = 0,
# and back: kernel = weight_ih.T, recurrent_kernel = weight_hh.T, bias = bias_ih + bias_hh.
# A Dense kernel is (in, out), torch's Linear weight (out, in): weight = kernel.T.

from __future__ import annotations

import datetime
import io
import json
import os
import secrets
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import numpy as np

from ..nn import LSTM, Linear, LSTMModel, Sequential
from ..nn.lstm import variant_options
from ..nn.quantized import refuse_quantized

__all__ = ["load", "save"]

_LOAD = "eigenlstm.keras.load"
_SAVE = "eigenlstm.keras.save"
#: The Keras version written into metadata.json: the format is that of Keras 3.
KERAS_FORMAT_VERSION = "3.0.0"


def _import_h5py(where: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{where} needs h5py: pip install 'eigenlstm[keras]'") from None
    return h5py


# ==== load ===================================================================================
@dataclass(eq=False)
class _Spec:
    """One Keras layer as read from the config, checked, with its weights still to be read."""

    kind: str  # "lstm" or "dense"
    name: str  # the Keras layer name (its weights' group in a legacy .h5)
    cfg: dict[str, Any]  # the layer's Keras config
    units: int  # LSTM units H, or Dense units O
    use_bias: bool
    dtype: np.dtype  # float32 or float64
    bidirectional: bool = False  # LSTM only: a Bidirectional(LSTM) with merge_mode='concat'
    return_sequences: bool = False  # LSTM only
    # LSTM only: Keras's recurrent_dropout, which is eigenlstm's (one mask on h_{t-1} per
    # sequence and unit, fixed over the steps of a call; training only)
    recurrent_dropout: float = 0.0
    key: str = ""  # where a Keras 3 archive stores its weights (see _storage_keys)


def _refuse(layer: str, cls: str, msg: str) -> NoReturn:
    raise ValueError(f"{_LOAD}: layer {layer!r} ({cls}): {msg}")


def _dtype_name(cfg: dict[str, Any]) -> str:
    dt = cfg.get("dtype", "float32")
    if isinstance(dt, dict):  # Keras 3: a serialized DTypePolicy
        dt = dt.get("config", {}).get("name", "float32")
    return dt or "float32"


def _check_dtype(name: str, cls: str, cfg: dict[str, Any]) -> np.dtype:
    dt = _dtype_name(cfg)
    if dt not in ("float32", "float64"):
        _refuse(name, cls, f"dtype must be 'float32' or 'float64', got {dt!r}")
    return np.dtype(dt)


def _check_lstm(name: str, cls: str, cfg: dict) -> None:
    """Refuse every LSTM option eigenlstm's cell does not compute, naming it."""
    expected = {
        "activation": "tanh",
        "recurrent_activation": "sigmoid",
        "return_state": False,
        "go_backwards": False,
        "stateful": False,
        "time_major": False,
    }
    for key, want in expected.items():
        got = cfg.get(key, want)
        if got != want:
            _refuse(name, cls, f"{key} must be {want!r}, got {got!r}")
    dropout = float(cfg.get("dropout", 0.0))
    if dropout:  # inference never applies it; said, so that fine-tuning is not a surprise
        warnings.warn(
            f"eigenlstm.keras.load: layer {name!r} ({cls}) has input dropout={dropout:g}, which "
            "eigenlstm's LSTM does not have; it is left out (it acts only in training: "
            "predictions are unchanged)",
            UserWarning,
            stacklevel=4,
        )


def _lstm_spec(layer: dict, name: str) -> _Spec:
    cls, cfg = layer["class_name"], layer["config"]
    if cls == "LSTM":
        _check_lstm(name, cls, cfg)
        return _Spec(
            "lstm",
            name,
            cfg,
            units=int(cfg["units"]),
            bidirectional=False,
            use_bias=bool(cfg.get("use_bias", True)),
            return_sequences=bool(cfg.get("return_sequences", False)),
            recurrent_dropout=float(cfg.get("recurrent_dropout", 0.0)),
            dtype=_check_dtype(name, cls, cfg),
        )
    inner = cfg.get("layer", {})
    if inner.get("class_name") != "LSTM":
        _refuse(name, cls, f"the wrapped layer must be an LSTM, got {inner.get('class_name')!r}")
    merge = cfg.get("merge_mode", "concat")
    if merge != "concat":
        _refuse(name, cls, f"merge_mode must be 'concat', got {merge!r}")
    fwd = inner["config"]
    _check_lstm(name, cls, fwd)
    back = cfg.get("backward_layer")
    if back is not None:
        bcfg = dict(back.get("config", {}))
        if back.get("class_name") != "LSTM" or not bcfg.get("go_backwards", False):
            _refuse(name, cls, "backward_layer must be an LSTM with go_backwards=True")
        bcfg["go_backwards"] = False
        _check_lstm(name, cls, bcfg)
        for key in ("units", "use_bias", "return_sequences", "recurrent_dropout"):
            if bcfg.get(key) != fwd.get(key):
                _refuse(
                    name,
                    cls,
                    f"backward_layer's {key} must equal the forward layer's "
                    f"{fwd.get(key)!r}, got {bcfg.get(key)!r}",
                )
    return _Spec(
        "lstm",
        name,
        cfg,
        units=int(fwd["units"]),
        bidirectional=True,
        use_bias=bool(fwd.get("use_bias", True)),
        return_sequences=bool(fwd.get("return_sequences", False)),
        recurrent_dropout=float(fwd.get("recurrent_dropout", 0.0)),
        dtype=_check_dtype(name, cls, cfg),
    )


def _dense_spec(layer: dict, name: str) -> _Spec:
    cfg = layer["config"]
    act = cfg.get("activation", "linear")
    if act not in ("linear", None):
        _refuse(name, "Dense", f"activation must be 'linear', got {act!r}")
    return _Spec(
        "dense",
        name,
        cfg,
        units=int(cfg["units"]),
        use_bias=bool(cfg.get("use_bias", True)),
        dtype=_check_dtype(name, "Dense", cfg),
    )


def _inbound_names(layer: dict) -> list[str]:
    """Names of the layers feeding ``layer`` in a functional config (Keras 3 and Keras 2)."""
    names = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            hist = obj.get("config", {}).get("keras_history") if "config" in obj else None
            if obj.get("class_name") == "__keras_tensor__" and hist:
                names.append(hist[0])
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
                names.append(obj[0])  # Keras 2: [layer_name, node_index, tensor_index, kwargs]
                return
            for v in obj:
                walk(v)

    walk(layer.get("inbound_nodes", []))
    return names


_SNAKE = {
    "InputLayer": "input_layer",
    "LSTM": "lstm",
    "Bidirectional": "bidirectional",
    "Dense": "dense",
}


def _storage_keys(layers: list[dict]) -> list[str]:
    """Where Keras 3 stores each layer's weights: not under its name but under its class name
    in snake case, numbered in order within the container ("lstm", "lstm_1", ...)."""
    used: dict = {}
    keys = []
    for layer in layers:
        cls = layer["class_name"]
        stem = _SNAKE.get(cls, cls.lower())
        n = used.get(stem, 0)
        used[stem] = n + 1
        keys.append(stem if n == 0 else f"{stem}_{n}")
    return keys


def _layer_list(config: dict) -> list[dict]:
    """The model's layers in order (each with its storage key), after checking that it is
    one linear chain."""
    cls = config.get("class_name")
    cfg = config.get("config", {})
    layers = cfg.get("layers") if isinstance(cfg, dict) else cfg
    if layers is None:
        raise ValueError(f"{_LOAD}: the model config has no list of layers")
    if cls == "Sequential":  # Sequential.layers leaves the InputLayer out
        layers = [l for l in layers if l["class_name"] != "InputLayer"]
        return [dict(l, _key=k) for l, k in zip(layers, _storage_keys(layers))]
    layers = [dict(l, _key=k) for l, k in zip(layers, _storage_keys(layers))]
    if cls not in ("Functional", "Model"):
        raise ValueError(
            f"{_LOAD}: the model must be a Sequential or a functional Model, got {cls!r}"
        )
    by_name = {l.get("name", l["config"].get("name")): l for l in layers}
    outs = cfg.get("output_layers", [])
    if outs and isinstance(outs[0], str):  # Keras 3 writes one output as [name, node, tensor]
        outs = [outs]
    if len(outs) != 1:
        raise ValueError(f"{_LOAD}: a functional model must have one output, got {len(outs)}")
    out_name = outs[0][0]
    chain, name = [], out_name
    while True:
        layer = by_name[name]
        if layer["class_name"] == "InputLayer":
            break
        chain.append(layer)
        inbound = _inbound_names(layer)
        if len(inbound) != 1:
            raise ValueError(
                f"{_LOAD}: a functional model must be a linear chain; layer {name!r} "
                f"has {len(inbound)} inputs"
            )
        name = inbound[0]
    if len(chain) != len(layers) - 1:
        raise ValueError(
            f"{_LOAD}: a functional model must be a linear chain from its input to its "
            f"output; {len(layers) - 1 - len(chain)} layers are off it"
        )
    return chain[::-1]


def _specs(config: dict) -> list[_Spec]:
    specs = []
    for layer in _layer_list(config):
        cls = layer["class_name"]
        name = layer["config"].get("name", layer.get("name"))
        if cls in ("LSTM", "Bidirectional"):
            specs.append(_lstm_spec(layer, name))
        elif cls == "Dense":
            specs.append(_dense_spec(layer, name))
        else:
            _refuse(name, cls, "only LSTM, Bidirectional(LSTM) and Dense layers are read")
        specs[-1].key = layer["_key"]
    if not specs:
        raise ValueError(f"{_LOAD}: the model has no layers")
    dtypes = {s.dtype for s in specs}
    if len(dtypes) != 1:
        raise ValueError(
            f"{_LOAD}: all layers must share one dtype, got {sorted(map(str, dtypes))}"
        )
    return specs


def _weights_keras(h5, spec: _Spec) -> list[np.ndarray]:
    """The layer's arrays from a Keras 3 model.weights.h5, in Keras's order."""
    base = h5["layers"][spec.key]
    if spec.kind == "dense":
        groups = [base["vars"]]
    elif spec.bidirectional:
        groups = [base["forward_layer"]["cell"]["vars"], base["backward_layer"]["cell"]["vars"]]
    else:
        groups = [base["cell"]["vars"]]
    return [np.array(g[str(k)]) for g in groups for k in range(len(g))]


def _weights_h5(h5, spec: _Spec) -> list[np.ndarray]:
    """The layer's arrays from a legacy .h5, in the order of its ``weight_names``."""
    root = h5.get("model_weights", h5)
    group = root[spec.name]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
    return [np.array(group[n]) for n in names]


#: Reads one layer's arrays from an open h5 file: _weights_keras or _weights_h5.
_Reader = Callable[[Any, _Spec], list[np.ndarray]]


def _to_torch(spec: _Spec, arrays: list[np.ndarray], I: int) -> dict[str, np.ndarray]:
    """Check shapes and map one layer's Keras arrays to torch-named tensors (see the top)."""
    u = spec.units
    per = 3 if spec.use_bias else 2
    if spec.kind == "dense":
        shapes = [(I, u)] + ([(u,)] if spec.use_bias else [])
    else:
        shapes = ([(I, 4 * u), (u, 4 * u)] + ([(4 * u,)] if spec.use_bias else [])) * (
            2 if spec.bidirectional else 1
        )
    got = [a.shape for a in arrays]
    if got != shapes:
        raise ValueError(
            f"{_LOAD}: layer {spec.name!r}: weights must have shapes {shapes}, got {got}"
        )
    if spec.kind == "dense":
        out = {"weight": arrays[0].T}
        if spec.use_bias:
            out["bias"] = arrays[1]
        return out
    out = {}
    for d in range(2 if spec.bidirectional else 1):
        kernel, rec = arrays[d * per], arrays[d * per + 1]
        sfx = "_l0_reverse" if d else "_l0"
        out["weight_ih" + sfx] = kernel.T
        out["weight_hh" + sfx] = rec.T
        if spec.use_bias:
            out["bias_ih" + sfx] = arrays[d * per + 2]
            out["bias_hh" + sfx] = np.zeros(4 * u, arrays[d * per + 2].dtype)
    return out


def _as_lstm_model(specs: list[_Spec]) -> bool:
    """Whether the layers are exactly an LSTMModel: a stack of equal unidirectional LSTMs,
    sequences between them and the last step into one Dense with a bias."""
    *lstms, head = specs
    return (
        bool(lstms)
        and head.kind == "dense"
        and head.use_bias
        and all(
            s.kind == "lstm"
            and not s.bidirectional
            and s.units == lstms[0].units
            and s.recurrent_dropout == lstms[0].recurrent_dropout
            for s in lstms
        )
        and all(s.return_sequences for s in lstms[:-1])
        and not lstms[-1].return_sequences
    )


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], _Reader, Any]:
    """(config dict, weight reader, open h5 file) of a .keras archive or a legacy .h5 file."""
    h5py = _import_h5py(_LOAD)
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ValueError(
                    f"{_LOAD}: {path} is a zip file but not a .keras archive "
                    f"(config.json and model.weights.h5), it holds {sorted(names)}"
                )
            config = json.loads(z.read("config.json"))
            h5 = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        return config, _weights_keras, h5
    if h5py.is_hdf5(path):
        h5 = h5py.File(path, "r")
        raw = h5.attrs.get("model_config")
        if raw is None:
            h5.close()
            raise ValueError(
                f"{_LOAD}: {path} is an HDF5 file without a model_config (weights only?)"
            )
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return config, _weights_h5, h5
    raise ValueError(f"{_LOAD}: {path} must be a .keras archive or a legacy .h5 file")


def load(path: str | os.PathLike[str]) -> LSTMModel | Sequential:
    """Read a Keras model of ``LSTM``, ``Bidirectional(LSTM)`` and ``Dense`` layers.

    Parameters
    ----------
    path : str or os.PathLike
        A Keras 3 ``.keras`` archive or a legacy ``.h5`` file (Keras 2 or 3) holding a
        ``Sequential`` or a linear functional model.

    Returns
    -------
    LSTMModel or Sequential
        In eval mode, with ``predict(x)`` equal to Keras's ``model.predict(x)`` for ``x`` of
        shape (N, T, I). An ``LSTMModel`` (which can also ``fit``) when the model is a stack of
        equal unidirectional LSTMs followed by one Dense layer with a bias on the last step;
        a ``Sequential`` otherwise.

    Notes
    -----
    Read: ``return_sequences`` on any layer, ``use_bias``, ``Bidirectional`` with
    ``merge_mode='concat'``, float32 or float64. Dropout settings are ignored (inference).
    Refused with ``ValueError`` naming the layer and the option: other layers, activations
    other than tanh/sigmoid (and a linear Dense), ``return_state``, ``go_backwards``,
    ``stateful``, other merge modes and dtypes.

    Only h5py, ``zipfile`` and ``json`` are used: Keras need not be installed. Nothing is
    built until the whole file has been read and checked.

    Raises
    ------
    ValueError
        On a file that is not a Keras model, or a layer or option outside the above.
    ImportError
        If h5py is missing.
    """
    config, reader, h5 = _read(path)
    try:
        try:
            specs = _specs(config)
        except KeyError as e:
            raise ValueError(f"{_LOAD}: {os.fspath(path)} has a model config without {e}") from None
        try:
            arrays = [reader(h5, spec) for spec in specs]
        except KeyError as e:
            raise ValueError(f"{_LOAD}: {os.fspath(path)} lacks the weights entry {e}") from None
    finally:
        h5.close()
    dtype = specs[0].dtype
    I = arrays[0][0].shape[0]
    tensors, features = [], I
    for spec, arrs in zip(specs, arrays):
        tensors.append(_to_torch(spec, arrs, features))
        features = spec.units * (2 if spec.bidirectional else 1)
    if _as_lstm_model(specs):
        *lstms, head = specs
        model = LSTMModel(
            I,
            lstms[0].units,
            head.units,
            len(lstms),
            recurrent_dropout=lstms[0].recurrent_dropout,
            dtype=dtype,
            seed=0,
        )
        state = {"fc.weight": tensors[-1]["weight"], "fc.bias": tensors[-1]["bias"]}
        for l, t in enumerate(tensors[:-1]):
            for key, value in t.items():
                state["lstm." + key.replace("_l0", f"_l{l}")] = value
        for key, value in model.state_dict().items():  # LSTM layers without use_bias
            if key not in state:
                state[key] = np.zeros_like(value)
        model.load_state_dict(state)
        model.eval()
        return model
    layers: list[LSTM | Linear] = []
    flags: list[bool] = []
    features = I
    for spec, t in zip(specs, tensors):
        layer: LSTM | Linear
        if spec.kind == "lstm":
            layer = LSTM(
                features,
                spec.units,
                bias=spec.use_bias,
                batch_first=True,
                bidirectional=spec.bidirectional,
                recurrent_dropout=spec.recurrent_dropout,
                dtype=dtype,
                seed=0,
            )
            flags.append(spec.return_sequences)
            features = spec.units * layer.num_directions
        else:
            layer = Linear(features, spec.units, bias=spec.use_bias, dtype=dtype, seed=0)
            features = spec.units
        layer.load_state_dict(t)
        layers.append(layer)
    seq = Sequential(layers, return_sequences=flags)
    seq.eval()
    return seq


# ==== save ===================================================================================
def _ser(module: str, cls: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"module": module, "class_name": cls, "config": config, "registered_name": None, **extra}


def _policy(dtype: str) -> dict[str, Any]:
    return _ser("keras", "DTypePolicy", {"name": dtype})


def _lstm_config(
    name: str,
    units: int,
    use_bias: bool,
    return_sequences: bool,
    dtype: str,
    go_backwards: bool = False,
    recurrent_dropout: float = 0.0,
) -> dict:
    return {
        "name": name,
        "trainable": True,
        "dtype": _policy(dtype),
        "return_sequences": return_sequences,
        "return_state": False,
        "go_backwards": go_backwards,
        "stateful": False,
        "unroll": False,
        "zero_output_for_mask": False,
        "units": units,
        "activation": "tanh",
        "recurrent_activation": "sigmoid",
        "use_bias": use_bias,
        "unit_forget_bias": True,
        "dropout": 0.0,
        "recurrent_dropout": recurrent_dropout,
        "seed": None,
    }


def _keras_layers(model):
    """(Keras layer configs, weight entries) for an LSTMModel or Sequential; refuses what
    Keras cannot express."""
    if isinstance(model, LSTMModel):
        if model.bidirectional:
            raise ValueError(
                f"{_SAVE}: a bidirectional LSTMModel cannot be written: it reads both directions "
                "at the last step (torch's out[:, -1, :]), while Keras's Bidirectional(LSTM) "
                "gives the reverse direction's final state; use an el.Sequential"
            )
        # a per-step head is Keras's LSTM(return_sequences=True) then Dense on every step
        items = [(model.lstm, model.many_to_many), (model.fc, None)]
    elif isinstance(model, Sequential):
        flags = iter(model.return_sequences)
        items = [(l, next(flags) if isinstance(l, LSTM) else None) for l in model.layers]
    else:
        raise TypeError(
            f"{_SAVE}: model must be an eigenlstm LSTMModel or Sequential, got {type(model).__name__}"
        )
    dtype = model.dtype.name
    layers, weights, used = [], [], {}

    def fresh(stem):
        used[stem] = used.get(stem, -1) + 1
        return stem if used[stem] == 0 else f"{stem}_{used[stem]}"

    features = None
    for layer, rs in items:
        if isinstance(layer, Linear):
            name = fresh("dense")
            cfg = {
                "name": name,
                "trainable": True,
                "dtype": _policy(dtype),
                "units": layer.out_features,
                "activation": "linear",
                "use_bias": layer.bias is not None,
            }
            layers.append(
                _ser(
                    "keras.layers",
                    "Dense",
                    cfg,
                    build_config={"input_shape": [None, layer.in_features]},
                )
            )
            sd = layer.state_dict()
            weights.append(
                (f"layers/{name}/vars", [sd["weight"].T] + ([sd["bias"]] if "bias" in sd else []))
            )
            continue
        if layer.proj_size:
            raise ValueError(
                f"{_SAVE}: an LSTM with proj_size={layer.proj_size} cannot be written: "
                "Keras's LSTM has no projection"
            )
        if layer.reverse:
            raise ValueError(
                f"{_SAVE}: an LSTM with reverse=True cannot be written: Keras's go_backwards "
                "returns its sequence in reversed time order"
            )
        variants = variant_options(layer)
        rd = variants.pop("recurrent_dropout", 0.0)  # Keras's own, written as is
        if variants:
            raise ValueError(
                f"{_SAVE}: an LSTM with {', '.join(f'{k}={v!r}' for k, v in variants.items())} "
                "cannot be written: Keras's LSTM has no such cell variant"
            )
        sd, H = layer.state_dict(), layer.hidden_size
        features = layer.input_size
        for l in range(layer.num_layers):
            # Every layer but the last of a stacked LSTM passes its sequence on.
            seqs = True if l < layer.num_layers - 1 else rs
            shape = {"input_shape": [None, None, features]}

            def cell(sfx, sd=sd, l=l, bias=layer.bias):
                arrs = [sd[f"weight_ih_l{l}{sfx}"].T, sd[f"weight_hh_l{l}{sfx}"].T]
                if bias:
                    arrs.append(sd[f"bias_ih_l{l}{sfx}"] + sd[f"bias_hh_l{l}{sfx}"])
                return arrs

            if layer.bidirectional:
                name = fresh("bidirectional")
                fwd = _lstm_config(
                    f"forward_{name}", H, layer.bias, seqs, dtype, recurrent_dropout=rd
                )
                bwd = _lstm_config(
                    f"backward_{name}",
                    H,
                    layer.bias,
                    seqs,
                    dtype,
                    go_backwards=True,
                    recurrent_dropout=rd,
                )
                cfg = {
                    "name": name,
                    "trainable": True,
                    "dtype": _policy(dtype),
                    "merge_mode": "concat",
                    "layer": _ser("keras.layers", "LSTM", fwd, build_config=shape),
                    "backward_layer": _ser("keras.layers", "LSTM", bwd, build_config=shape),
                }
                layers.append(_ser("keras.layers", "Bidirectional", cfg, build_config=shape))
                weights.append((f"layers/{name}/forward_layer/cell/vars", cell("")))
                weights.append((f"layers/{name}/backward_layer/cell/vars", cell("_reverse")))
            else:
                name = fresh("lstm")
                cfg = _lstm_config(name, H, layer.bias, seqs, dtype, recurrent_dropout=rd)
                layers.append(_ser("keras.layers", "LSTM", cfg, build_config=shape))
                weights.append((f"layers/{name}/cell/vars", cell("")))
            features = H * layer.num_directions
    return layers, weights


def save(model: LSTMModel | Sequential, path: str | os.PathLike[str]) -> None:
    """Write an ``LSTMModel`` or ``Sequential`` as a Keras 3 ``.keras`` archive.

    Parameters
    ----------
    model : LSTMModel or Sequential
        Unidirectional ``LSTMModel``\\ s, and ``Sequential`` models of LSTMs without
        projection and Linear layers. A stacked LSTM becomes one Keras LSTM per layer.
    path : str or os.PathLike
        Destination, written atomically (a temporary file in the same folder, then renamed).

    Notes
    -----
    ``keras.saving.load_model(path)`` opens the file and predicts what ``model.predict``
    does. The two torch biases are summed into Keras's one. Dropout is not written (it does
    not act at inference). Written with h5py, ``zipfile`` and ``json``: Keras need not be
    installed.

    Raises
    ------
    TypeError
        If ``model`` is neither an LSTMModel nor a Sequential.
    ValueError
        For a bidirectional LSTMModel (its last-step semantics are not Keras's) or an LSTM
        with ``proj_size > 0``.
    """
    refuse_quantized(_SAVE, model)  # before asking for h5py: no install makes this work
    h5py = _import_h5py(_SAVE)
    layers, weights = _keras_layers(model)
    dtype = model.dtype.name
    input_size = model.input_size
    input_layer = _ser(
        "keras.layers",
        "InputLayer",
        {
            "batch_shape": [None, None, input_size],
            "dtype": dtype,
            "sparse": False,
            "ragged": False,
            "name": "input_layer",
            "optional": False,
        },
    )
    config = _ser(
        "keras",
        "Sequential",
        {
            "name": "sequential",
            "trainable": True,
            "dtype": _policy(dtype),
            "layers": [input_layer] + layers,
            "build_input_shape": [None, None, input_size],
        },
        build_config={"input_shape": [None, None, input_size]},
        compile_config=None,
    )
    metadata = {
        "keras_version": KERAS_FORMAT_VERSION,
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
    }
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_group("vars").attrs["name"] = "sequential"
        for entry, arrays in weights:
            group = h5.require_group(entry)
            group.attrs["name"] = entry.split("/")[-2]
            for k, a in enumerate(arrays):
                group.create_dataset(str(k), data=np.ascontiguousarray(a, dtype=dtype))
    path = os.fspath(path)
    tmp = os.path.join(
        os.path.dirname(os.path.abspath(path)),
        f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp",
    )
    try:
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr("metadata.json", json.dumps(metadata))
            z.writestr("config.json", json.dumps(config))
            z.writestr("model.weights.h5", buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
