"""The small learnable task, model and fit arguments shared by the checkpoint and interrupt tests."""

import numpy as np

import eigenlstm as el


def task(N=80, L=6, seed=0):
    """x of shape (N, L, 3) and two targets: the sum of x, and the last step's first feature."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, L, 3)).astype(np.float32)
    return x, np.stack([x.sum(axis=(1, 2)), x[:, -1, 0]], axis=1)


def new_model():
    """Two layers with dropout, so the dropout stream is part of every saved state."""
    return el.LSTMModel(3, 8, 2, num_layers=2, dropout=0.3, seed=5)


# Every piece of training state is in play: Adam moments, a schedule, clipping, dropout.
FIT = dict(
    batch_size=16,
    lr=1e-2,
    optimizer="adam",
    clip_grad_norm=1.0,
    lr_schedule=("cosine", {"T_max": 4}),
    progress=False,
)
