"""What the parity tests share: a run's results as one dict, the float64 reference run in one
call, the layouts the module reads, and central finite differences.

The tolerances stay in each test file, next to the reasoning that sets them.
"""
# Sizes: T time steps, N batch, F features, D directions, L layers.

import numpy as np

from reference import reference_backward, reference_forward

__all__ = [
    "ARRAYS",
    "finite_difference",
    "reference_results",
    "results",
    "results_to_api",
    "to_api",
    "torch_results",
]

# The arrays of a run besides the parameter gradients ("grads"), in the order LSTM returns them.
ARRAYS = ("output", "h_n", "c_n", "dx", "dh0", "dc0")
# Time-major sequences (T, N, F); every other array is a state (D*L, N, F).
SEQUENCES = ("x", "output", "d_output", "dx")


def results(forward, backward, grads):
    """One dict of ARRAYS and ``grads`` from a forward ``(output, (h_n, c_n))`` and a backward
    ``(dx, (dh0, dc0))``, as LSTM returns them."""
    (output, (h_n, c_n)), (dx, (dh0, dc0)) = forward, backward
    return dict(zip(ARRAYS, (output, h_n, c_n, dx, dh0, dc0)), grads=grads)


def reference_results(case, dropout_masks=None):
    """Forward and backward of the float64 reference (tests/reference.py), time-major.

    ``case`` holds ``params``, ``x``, ``h0``, ``c0``, ``lengths``, the output gradients
    ``d_output``, ``dh_n``, ``dc_n`` and a ``cfg`` with ``num_layers``, ``bidirectional`` and
    ``proj_size`` (other keys are ignored).
    """
    cfg = case["cfg"]
    out, h_n, c_n, cache = reference_forward(
        case["params"],
        case["x"],
        case["h0"],
        case["c0"],
        num_layers=cfg["num_layers"],
        bidirectional=cfg["bidirectional"],
        proj_size=cfg["proj_size"],
        lengths=case["lengths"],
        dropout_masks=dropout_masks,
    )
    dx, dh0, dc0, dparams = reference_backward(cache, case["d_output"], case["dh_n"], case["dc_n"])
    return results((out, (h_n, c_n)), (dx, (dh0, dc0)), dparams)


def torch_results(inputs, outputs, d_outputs, parameters):
    """Backpropagate sum(output*d_output) + sum(h_n*dh_n) + sum(c_n*dc_n) with torch autograd.

    ``inputs`` are the leaf tensors (x, h0, c0), ``outputs`` the module's (output, h_n, c_n),
    ``d_outputs`` the tensors (d_output, dh_n, dc_n) and ``parameters`` (name, tensor) pairs.
    Returns results() of NumPy arrays.
    """
    (x, h0, c0), (out, h_n, c_n), (d_output, dh_n, dc_n) = inputs, outputs, d_outputs
    loss = (out * d_output).sum() + (h_n * dh_n).sum() + (c_n * dc_n).sum()
    loss.backward()
    return results(
        (out.detach().numpy(), (h_n.detach().numpy(), c_n.detach().numpy())),
        (x.grad.numpy(), (h0.grad.numpy(), c0.grad.numpy())),
        {name: p.grad.numpy() for name, p in parameters},
    )


def to_api(key, a, *, batch_first, unbatched):
    """The array ``key`` of a case or a result, time-major, in the layout the module reads and
    returns: a sequence (T, N, F) becomes (N, T, F) with batch_first, (T, F) unbatched; a state
    (D*L, N, F) becomes (D*L, F) unbatched."""
    if unbatched:
        return a[:, 0]
    return a.transpose(1, 0, 2) if batch_first and key in SEQUENCES else a


def results_to_api(result, *, batch_first, unbatched):
    """A time-major result (reference_results) in the layout the module returns."""
    out = {k: to_api(k, result[k], batch_first=batch_first, unbatched=unbatched) for k in ARRAYS}
    out["grads"] = result["grads"]
    return out


def finite_difference(loss, array, eps=1e-6):
    """Central differences of loss() with respect to every entry of array (perturbed in place)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + eps
        plus = loss()
        array[index] = saved - eps
        minus = loss()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * eps)
    return grad
