"""``eigenlstm.optim``: optimizers, learning-rate schedules and gradient clipping, as torch.optim.

Optimizers update parameters in place from their gradients and then tell the module, so that
the engine repacks its weights; schedules change an optimizer's ``lr`` once per epoch.
"""

from . import lr_scheduler
from .clip import clip_grad_norm, clip_grad_norm_
from .lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR
from .optimizer import SGD, Adam, AdamW, Optimizer

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "lr_scheduler",
    "LRScheduler",
    "StepLR",
    "CosineAnnealingLR",
    "clip_grad_norm_",
    "clip_grad_norm",
]
