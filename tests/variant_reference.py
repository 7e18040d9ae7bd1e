"""Torch autograd reference of the LSTM cell variants (peepholes, cell and projection clipping).

Written from the equations, one time step at a time in float64, so that autograd gives the
gradients the engine's hand-written backward must match. torch.nn.LSTM has none of these
variants; this is what a user writes today instead.
"""
# Sizes: T time steps, B batch, I input size, H hidden, P projection (0 = none),
# Hout = P or H, D directions, L layers.

import numpy as np
import torch

__all__ = ["variant_forward"]


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
    peepholes=False,
    cell_clip=None,
    proj_clip=None,
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

    Returns
    -------
    output (T, B, D*Hout), h_n (D*L, B, Hout), c_n (D*L, B, H) : torch.Tensor

    Notes
    -----
    Per valid step, gate order i, f, g, o::

        a = W_ih x_t + b_ih + W_hh h + b_hh
        i = sigma(a_i + w_ci*c),  f = sigma(a_f + w_cf*c),  g = tanh(a_g)
        c' = clip(f*c + i*g, cell_clip)
        o = sigma(a_o + w_co*c')
        h' = clip(W_hr (o*tanh(c')), proj_clip)     (h' = o*tanh(c') without projection)
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
            h, c = h0[k], c0[k]
            out = [None] * T
            for t in range(T) if d == 0 else reversed(range(T)):
                a = layer_input[t] @ w_ih.T + h @ w_hh.T + b
                ai, af, ag, ao = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
                if w_p is not None:
                    ai, af = ai + w_p[0] * c, af + w_p[1] * c
                i, f, g = torch.sigmoid(ai), torch.sigmoid(af), torch.tanh(ag)
                c_new = f * c + i * g
                if cell_clip is not None:
                    c_new = torch.clamp(c_new, -cell_clip, cell_clip)
                if w_p is not None:
                    ao = ao + w_p[2] * c_new
                m = torch.sigmoid(ao) * torch.tanh(c_new)
                h_new = m @ w_hr.T if P > 0 else m
                if proj_clip is not None:
                    h_new = torch.clamp(h_new, -proj_clip, proj_clip)
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
