"""Torch autograd reference of the LSTM cell variants, and the masks of the random ones.

``variant_forward`` is written from the equations, one time step at a time in float64, so that
autograd gives the gradients the engine's hand-written backward must match. torch.nn.LSTM has
none of these variants; this is what a user writes today instead.

``call_masks`` draws the masks of one training call from the dropout stream as the engine
documents it (cpp/src/engine/dropout.hpp), written again here in NumPy: an engine that drew
any other mask would not match the reference.
"""
# Sizes: T time steps, B batch, I input size, H hidden, P projection (0 = none),
# Hout = P or H, D directions, L layers.

import numpy as np
import torch

__all__ = ["variant_forward", "call_masks", "as_tensors"]

_M64 = (1 << 64) - 1


def splitmix64(x):
    """splitmix64 of a uint64 array (Steele, Lea, Flood 2014), wrapping as in C++."""
    with np.errstate(over="ignore"):
        x = (np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


# The masks' kinds, as the engine numbers them.
KINDS = {"recurrent": 1, "weight": 2, "zoneout_c": 3, "zoneout_h": 4}


def mask_key(seed, counter, layer, kind, direction):
    base = int(splitmix64(np.uint64((counter * 0x100000001B3 + layer) & _M64)))
    k = seed ^ base
    k ^= int(splitmix64(np.uint64((0xD1B54A32D192ED03 * (2 * KINDS[kind] + direction)) & _M64)))
    return int(splitmix64(np.uint64(k)))


def draws(key, n, q):
    """Bernoulli(q) draws of elements 0..n-1 of a mask: (splitmix64(key + j) >> 11) < q 2^53."""
    with np.errstate(over="ignore"):
        j = (np.uint64(key) + np.arange(n, dtype=np.uint64)).astype(np.uint64)
    u = (splitmix64(j) >> np.uint64(11)).astype(np.float64)
    return u < q * 2.0**53


def call_masks(lstm, T, B, seed, counter):
    """The masks of a training call of ``lstm`` (an el.LSTM) at dropout state (seed, counter),
    per layer and direction k: ``r`` (B, Hout) recurrent-dropout factors, ``w`` (4H, Hout)
    weight-drop factors in torch's row order (3H rows with cifg), ``zc`` (T, B, H) and ``zh`` (T, B, Hout) zoneout
    masks (1: keep the previous state)."""
    H, Hout, D = lstm.hidden_size, lstm.output_size, lstm.num_directions
    z = lstm.zoneout if isinstance(lstm.zoneout, tuple) else (lstm.zoneout,) * 2
    masks = []
    for layer in range(lstm.num_layers):
        for d in range(D):
            m = {}

            def key(kind, layer=layer, d=d):
                return mask_key(seed, counter, layer, kind, d)

            if lstm.recurrent_dropout > 0:
                p = lstm.recurrent_dropout
                m["r"] = np.where(draws(key("recurrent"), B * Hout, p), 0.0, 1 / (1 - p)).reshape(
                    B, Hout
                )
            if lstm.weight_drop > 0:
                p, G = lstm.weight_drop, (3 if lstm.cifg else 4) * H
                m["w"] = np.where(draws(key("weight"), G * Hout, p), 0.0, 1 / (1 - p)).reshape(
                    G, Hout
                )
            if z[0] > 0:
                m["zc"] = draws(key("zoneout_c"), T * B * H, z[0]).reshape(T, B, H) * 1.0
            if z[1] > 0:
                m["zh"] = draws(key("zoneout_h"), T * B * Hout, z[1]).reshape(T, B, Hout) * 1.0
            masks.append(m)
    return masks


def variant_forward(
    params,
    x,
    h0,
    c0,
    *,
    num_layers,
    bidirectional,
    proj_size,
    lengths=None,
    cifg=False,
    peepholes=False,
    cell_clip=None,
    proj_clip=None,
    zoneout=(0.0, 0.0),
    layer_norm=False,
    masks=None,
):
    """Forward of a multi-layer LSTM with cell variants, in torch (differentiable).

    Parameters
    ----------
    params : dict of str to torch.Tensor
        el.LSTM state_dict keys; ``weight_peephole_l{k}{suffix}`` (3, H) rows w_ci, w_cf,
        w_co with ``peepholes``. Biases may be absent.
    x : torch.Tensor (T, B, I);  h0 (D*L, B, Hout);  c0 (D*L, B, H)
    lengths : sequence of int (B,), optional
        Valid steps; padded steps keep the state and output zeros (torch's packed semantics).
    zoneout : (z_c, z_h)
        Evaluation zoneout (the expectation), used where ``masks`` has no zoneout mask.
    layer_norm : bool
        Layer norms with the ``layer_norm_{ih,hh,c}_{weight,bias}_l{k}{suffix}`` parameters,
        each ``torch.nn.functional.layer_norm`` (eps 1e-5).
    masks : list of dict per layer and direction, optional
        A training call's masks (``call_masks``): ``r``, ``w``, ``zc``, ``zh``.

    Returns
    -------
    output (T, B, D*Hout), h_n (D*L, B, Hout), c_n (D*L, B, H) : torch.Tensor

    Notes
    -----
    Per valid step, gate order i, f, g, o (i, g, o with ``cifg``, and f = 1 - i)::

        a = W_ih x_t + b_ih + W_hh h + b_hh
        i = sigma(a_i + w_ci*c),  f = sigma(a_f + w_cf*c),  g = tanh(a_g)
        c' = clip(f*c + i*g, cell_clip)
        o = sigma(a_o + w_co*c')
        h' = clip(W_hr (o*tanh(c')), proj_clip)     (h' = o*tanh(c') without projection)
        c' = m_c*c + (1-m_c)*c',  h' = m_h*h + (1-m_h)*h'      (zoneout)

    with h entering W_hh as h*r (recurrent dropout) and W_hh as W_hh*w (weight drop). Layer
    norm: a = LN_ih(W_ih x_t) + LN_hh(W_hh h) + b_ih + b_hh, and tanh(c') above becomes
    tanh(LN_c(c')) (the peephole and the clip see c' itself).
    """
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = c0.shape[2]
    P = proj_size
    lengths = [T] * B if lengths is None else [int(n) for n in lengths]
    valid = torch.tensor([[t < n for n in lengths] for t in range(T)], dtype=torch.bool).unsqueeze(
        2
    )  # (T, B, 1)
    h_n, c_n = [], []
    layer_input = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            sfx = "_reverse" if d else ""
            w_ih, w_hh = params[f"weight_ih_l{layer}{sfx}"], params[f"weight_hh_l{layer}{sfx}"]
            b = 0.0
            if f"bias_ih_l{layer}{sfx}" in params:
                b = params[f"bias_ih_l{layer}{sfx}"] + params[f"bias_hh_l{layer}{sfx}"]
            w_hr = params.get(f"weight_hr_l{layer}{sfx}")
            w_p = params.get(f"weight_peephole_l{layer}{sfx}") if peepholes else None
            mk = {key: torch.tensor(v) for key, v in (masks[k] if masks else {}).items()}
            if "w" in mk:
                w_hh = w_hh * mk["w"]
            ln = {}
            if layer_norm:
                for part in ("ih", "hh", "c"):
                    gain = params[f"layer_norm_{part}_weight_l{layer}{sfx}"]
                    shift = params[f"layer_norm_{part}_bias_l{layer}{sfx}"]
                    ln[part] = lambda v, g=gain, s=shift: torch.nn.functional.layer_norm(
                        v, g.shape, g, s, eps=1e-5
                    )
            else:
                ln = dict.fromkeys(("ih", "hh", "c"), lambda v: v)
            h, c = h0[k], c0[k]
            out = [None] * T
            for t in range(T) if d == 0 else reversed(range(T)):
                h_in = h * mk["r"] if "r" in mk else h
                a = ln["ih"](layer_input[t] @ w_ih.T) + ln["hh"](h_in @ w_hh.T) + b
                if cifg:
                    ai, ag, ao = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
                    if w_p is not None:
                        ai = ai + w_p[0] * c
                    i, g = torch.sigmoid(ai), torch.tanh(ag)
                    f = 1 - i
                else:
                    ai, af, ag, ao = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
                    if w_p is not None:
                        ai, af = ai + w_p[0] * c, af + w_p[1] * c
                    i, f, g = torch.sigmoid(ai), torch.sigmoid(af), torch.tanh(ag)
                c_new = f * c + i * g
                if cell_clip is not None:
                    c_new = torch.clamp(c_new, -cell_clip, cell_clip)
                if w_p is not None:
                    ao = ao + w_p[2] * c_new
                m = torch.sigmoid(ao) * torch.tanh(ln["c"](c_new))
                h_new = m @ w_hr.T if P > 0 else m
                if proj_clip is not None:
                    h_new = torch.clamp(h_new, -proj_clip, proj_clip)
                for key, z, old, new in (
                    ("zc", zoneout[0], c, c_new),
                    ("zh", zoneout[1], h, h_new),
                ):
                    zm = mk[key][t] if key in mk else (z if z > 0 else None)
                    if zm is not None:
                        mixed = zm * old + (1 - zm) * new
                        if key == "zc":
                            c_new = mixed
                        else:
                            h_new = mixed
                v = valid[t]
                out[t] = torch.where(v, h_new, torch.zeros_like(h_new))
                h, c = torch.where(v, h_new, h), torch.where(v, c_new, c)
            outs.append(torch.stack(out))
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outs, dim=2)
    return layer_input, torch.stack(h_n), torch.stack(c_n)


def as_tensors(arrays: dict) -> dict:
    """float64 leaf tensors that require grad, from NumPy arrays."""
    return {
        k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
        for k, v in arrays.items()
    }
