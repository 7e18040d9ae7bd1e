"""Float64 pure-NumPy reference for a multi-layer torch.nn.LSTM: forward and hand-written BPTT.

The ground truth the engine is tested against, written from the equations for readability
(loops over layers, directions and time; vectorized over batch only). Batch-first and
unbatched layouts, dtype casting and argument validation are left to the caller.
"""
# Sizes, used everywhere in this file:
#   T time steps, B batch, I input size, H hidden size, P projection size (0 = none),
#   Hout = P if P > 0 else H, D directions (1 or 2), L layers, G = 4H gate rows.

import numpy as np

__all__ = ["init_params", "param_names", "reference_forward", "reference_backward"]


def param_names(num_layers, bidirectional, proj_size, bias):
    """Return the torch.nn.LSTM state_dict keys, in torch's order.

    Parameters
    ----------
    num_layers : int
        Number of stacked layers L.
    bidirectional : bool
        Whether each layer also runs a reverse direction (keys suffixed ``_reverse``).
    proj_size : int
        Projection size P; ``weight_hr_l{k}`` exists only when P > 0.
    bias : bool
        Whether ``bias_ih_l{k}`` / ``bias_hh_l{k}`` exist.

    Returns
    -------
    names : list of str
    """
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
            if proj_size > 0:
                names += [f"weight_hr_l{layer}{suffix}"]
    return names


def init_params(rng, input_size, hidden_size, num_layers, bidirectional, proj_size, bias):
    """Draw float64 parameters with torch.nn.LSTM's names and shapes.

    Parameters
    ----------
    rng : numpy.random.Generator
    input_size, hidden_size, num_layers, proj_size : int
        I, H, L and P (0 = no projection).
    bidirectional, bias : bool

    Returns
    -------
    params : dict of str to ndarray
        ``weight_ih_l0`` (G, I), ``weight_ih_l{k>0}`` (G, D*Hout), ``weight_hh_l{k}`` (G, Hout),
        ``bias_ih_l{k}`` / ``bias_hh_l{k}`` (G,), ``weight_hr_l{k}`` (P, H); every entry uniform
        in [-1/sqrt(H), 1/sqrt(H)] like torch's default initialisation.
    """
    H, P = hidden_size, proj_size
    D = 2 if bidirectional else 1
    Hout = P if P > 0 else H
    G = 4 * H
    bound = 1.0 / np.sqrt(H)
    shapes = {"weight_hh": (G, Hout), "bias_ih": (G,), "bias_hh": (G,), "weight_hr": (P, H)}
    params = {}
    for name in param_names(num_layers, bidirectional, proj_size, bias):
        kind, layer = name.split("_l")[0], int(name.split("_l")[1].split("_")[0])
        shape = (G, input_size if layer == 0 else D * Hout) if kind == "weight_ih" else shapes[kind]
        params[name] = rng.uniform(-bound, bound, size=shape)
    return params


def _sigmoid(x):
    # sigma(x) = (1 + tanh(x/2)) / 2 exactly; this form never overflows exp() for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _weights(params, layer, direction, H, P):
    """(w_ih (G, in), w_hh (G, Hout), b_ih (G,) or None, b_hh (G,) or None, w_hr (P, H) or None)."""
    suffix = "_reverse" if direction == 1 else ""
    get = lambda kind: params.get(f"{kind}_l{layer}{suffix}")  # noqa: E731
    return (
        get("weight_ih"),
        get("weight_hh"),
        get("bias_ih"),
        get("bias_hh"),
        (get("weight_hr") if P > 0 else None),
    )


def reference_forward(
    params, x, h0, c0, *, num_layers, bidirectional, proj_size, lengths=None, dropout_masks=None
):
    """Run a multi-layer LSTM forward in float64, with torch.nn.LSTM semantics.

    Parameters
    ----------
    params : dict of str to ndarray
        torch.nn.LSTM state_dict keys (see `param_names`); biases may be absent (bias=False).
    x : ndarray of shape (T, B, I)
        Time-major input.
    h0 : ndarray of shape (D*L, B, Hout)
        Initial hidden states, row ``layer*D + direction``.
    c0 : ndarray of shape (D*L, B, H)
        Initial cell states, same row order.
    num_layers : int
    bidirectional : bool
    proj_size : int
        P; 0 means no projection.
    lengths : ndarray of shape (B,), optional
        Valid steps per sequence, in [0, T]. Behaves like pack_padded_sequence(
        enforce_sorted=False) + pad_packed_sequence(total_length=T): output past a length is 0,
        h_n / c_n are the states at each sequence's last valid step (h0 / c0 for length 0), and
        the reverse direction starts at each sequence's own last valid step.
    dropout_masks : list of L-1 ndarrays of shape (T, B, D*Hout), optional
        Mask k multiplies the output of layer k before it feeds layer k+1; already scaled,
        i.e. entries in {0, 1/(1-p)}.

    Returns
    -------
    output : ndarray of shape (T, B, D*Hout)
        Last layer's hidden states, directions concatenated (forward first).
    h_n : ndarray of shape (D*L, B, Hout)
    c_n : ndarray of shape (D*L, B, H)
    cache : dict
        Everything `reference_backward` needs.

    Notes
    -----
    Per layer, direction and valid step, gate order i, f, g, o::

        i = sigma(W_ii x_t + b_ii + W_hi h_prev + b_hi)
        f = sigma(W_if x_t + b_if + W_hf h_prev + b_hf)
        g = tanh (W_ig x_t + b_ig + W_hg h_prev + b_hg)
        o = sigma(W_io x_t + b_io + W_ho h_prev + b_ho)
        c_t = f*c_prev + i*g
        h_t = o*tanh(c_t)              (P = 0)
        h_t = W_hr (o*tanh(c_t))       (P > 0)

    A padded step (t >= length) leaves h and c untouched and outputs 0.
    """
    x = np.asarray(x, dtype=np.float64)
    h0 = np.asarray(h0, dtype=np.float64)
    c0 = np.asarray(c0, dtype=np.float64)
    T, B, _ = x.shape
    L, P = num_layers, proj_size
    D = 2 if bidirectional else 1
    H = c0.shape[2]
    Hout = P if P > 0 else H
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths, dtype=np.int64)
    valid = (np.arange(T)[:, None] < lengths[None, :])[:, :, None]  # (T, B, 1) bool

    h_n = np.empty((D * L, B, Hout))
    c_n = np.empty((D * L, B, H))
    layers = []
    layer_input = x
    for layer in range(L):
        output = np.zeros((T, B, D * Hout))
        directions = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh, w_hr = _weights(params, layer, d, H, P)
            b = (0.0 if b_ih is None else b_ih) + (0.0 if b_hh is None else b_hh)
            saved = {
                name: np.zeros((T, B, H)) for name in ("c_prev", "i", "f", "g", "o", "tanh_c", "m")
            }
            saved["h_prev"] = np.zeros((T, B, Hout))
            h, c = h0[k].copy(), c0[k].copy()
            # The reverse direction walks t = T-1 .. 0; since padded steps leave the state
            # untouched, each sequence effectively starts at its own last valid step.
            for t in range(T) if d == 0 else reversed(range(T)):
                v = valid[t]
                # gates = W_ih x_t + b_ih + W_hh h_prev + b_hh, rows in order i, f, g, o
                gates_t = layer_input[t] @ w_ih.T + h @ w_hh.T + b
                i = _sigmoid(gates_t[:, 0 * H : 1 * H])
                f = _sigmoid(gates_t[:, 1 * H : 2 * H])
                g = np.tanh(gates_t[:, 2 * H : 3 * H])
                o = _sigmoid(gates_t[:, 3 * H : 4 * H])
                # c_t = f*c_prev + i*g;  m_t = o*tanh(c_t);  h_t = W_hr m_t (or m_t if P = 0)
                c_t = f * c + i * g
                tanh_c = np.tanh(c_t)
                m_t = o * tanh_c
                h_t = m_t @ w_hr.T if P > 0 else m_t
                for name, value in (
                    ("h_prev", h),
                    ("c_prev", c),
                    ("i", i),
                    ("f", f),
                    ("g", g),
                    ("o", o),
                    ("tanh_c", tanh_c),
                    ("m", m_t),
                ):
                    saved[name][t] = value
                output[t, :, d * Hout : (d + 1) * Hout] = np.where(v, h_t, 0.0)
                h = np.where(v, h_t, h)
                c = np.where(v, c_t, c)
            h_n[k], c_n[k] = h, c
            directions.append(saved)
        layers.append({"input": layer_input, "directions": directions})
        layer_input = output
        if layer < L - 1 and dropout_masks is not None:
            layer_input = output * dropout_masks[layer]

    cache = {
        "params": params,
        "layers": layers,
        "valid": valid,
        "dropout_masks": dropout_masks,
        "sizes": {"T": T, "B": B, "H": H, "P": P, "Hout": Hout, "D": D, "L": L},
    }
    return output, h_n, c_n, cache


def reference_backward(cache, d_output, dh_n=None, dc_n=None):
    """Backpropagate through `reference_forward` by hand (BPTT), in float64.

    Parameters
    ----------
    cache : dict
        As returned by `reference_forward`.
    d_output : ndarray of shape (T, B, D*Hout)
        Gradient of the loss with respect to ``output``; entries past a sequence's length are
        ignored (the output there is a constant 0).
    dh_n : ndarray of shape (D*L, B, Hout), optional
        Gradient with respect to ``h_n``; zero if None.
    dc_n : ndarray of shape (D*L, B, H), optional
        Gradient with respect to ``c_n``; zero if None.

    Returns
    -------
    dx : ndarray of shape (T, B, I)
    dh0 : ndarray of shape (D*L, B, Hout)
    dc0 : ndarray of shape (D*L, B, H)
    dparams : dict of str to ndarray
        Same keys and shapes as ``cache["params"]``.
    """
    params, layers, valid = cache["params"], cache["layers"], cache["valid"]
    masks = cache["dropout_masks"]
    s = cache["sizes"]
    T, B, H, P, Hout, D, L = s["T"], s["B"], s["H"], s["P"], s["Hout"], s["D"], s["L"]
    dh_n = np.zeros((D * L, B, Hout)) if dh_n is None else np.asarray(dh_n, dtype=np.float64)
    dc_n = np.zeros((D * L, B, H)) if dc_n is None else np.asarray(dc_n, dtype=np.float64)

    dparams = {name: np.zeros_like(value, dtype=np.float64) for name, value in params.items()}
    dh0 = np.zeros((D * L, B, Hout))
    dc0 = np.zeros((D * L, B, H))
    # Past a sequence's length the output is a constant 0: its gradient goes nowhere.
    d_layer_output = np.where(valid, np.asarray(d_output, dtype=np.float64), 0.0)
    for layer in reversed(range(L)):
        layer_input = layers[layer]["input"]
        d_layer_input = np.zeros_like(layer_input)
        for d in range(D):
            k = layer * D + d
            suffix = "_reverse" if d == 1 else ""
            w_ih, w_hh, b_ih, b_hh, w_hr = _weights(params, layer, d, H, P)
            dw_ih = dparams[f"weight_ih_l{layer}{suffix}"]
            dw_hh = dparams[f"weight_hh_l{layer}{suffix}"]
            saved = layers[layer]["directions"][d]
            dh, dc = dh_n[k].copy(), dc_n[k].copy()  # gradients w.r.t. the carried h and c
            # Undo the time loop: the forward direction backwards, the reverse one forwards.
            for t in reversed(range(T)) if d == 0 else range(T):
                v = valid[t]
                i, f, g, o = saved["i"][t], saved["f"][t], saved["g"][t], saved["o"][t]
                tanh_c, m_t = saved["tanh_c"][t], saved["m"][t]
                # h_t feeds both the next step (dh) and this step's output; padded rows get 0.
                dh_t = np.where(v, dh + d_layer_output[t, :, d * Hout : (d + 1) * Hout], 0.0)
                # forward: h_t = W_hr m_t  ->  dm = dh_t W_hr, dW_hr += dh_t^T m_t
                if P > 0:
                    dm = dh_t @ w_hr
                    dparams[f"weight_hr_l{layer}{suffix}"] += dh_t.T @ m_t
                else:
                    dm = dh_t
                # forward: m_t = o*tanh(c_t)  ->  do = dm*tanh(c_t), dc_t += dm*o*(1 - tanh(c_t)^2)
                do = dm * tanh_c
                dc_t = np.where(v, dc, 0.0) + dm * o * (1.0 - tanh_c**2)
                # forward: c_t = f*c_prev + i*g  ->  di = dc_t*g, df = dc_t*c_prev, dg = dc_t*i, dc_prev = dc_t*f
                di = dc_t * g
                df = dc_t * saved["c_prev"][t]
                dg = dc_t * i
                dc_prev = dc_t * f
                # forward: i, f, o = sigma(a), g = tanh(a)  ->  da = d*s*(1-s), da_g = dg*(1-g^2)
                dgates_t = np.concatenate(
                    [di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g**2), do * o * (1.0 - o)],
                    axis=1,
                )
                # forward: gates = W_ih x_t + b_ih + W_hh h_prev + b_hh
                dw_ih += dgates_t.T @ layer_input[t]
                dw_hh += dgates_t.T @ saved["h_prev"][t]
                if b_ih is not None:
                    dparams[f"bias_ih_l{layer}{suffix}"] += dgates_t.sum(axis=0)
                if b_hh is not None:
                    dparams[f"bias_hh_l{layer}{suffix}"] += dgates_t.sum(axis=0)
                d_layer_input[t] += dgates_t @ w_ih
                # forward (padded step): h, c unchanged  ->  their gradients pass straight through
                dh = np.where(v, dgates_t @ w_hh, dh)
                dc = np.where(v, dc_prev, dc)
            dh0[k], dc0[k] = dh, dc
        if layer == 0:
            dx = d_layer_input
        else:
            # forward: input of layer k+1 = output of layer k * mask k
            d_layer_output = d_layer_input
            if masks is not None:
                d_layer_output = d_layer_output * masks[layer - 1]
            d_layer_output = np.where(valid, d_layer_output, 0.0)
    return dx, dh0, dc0, dparams
