"""``eigenlstm.training``: the fit loop for any module, its callbacks and its history.

``Trainer`` (trainer.py) owns a run (optimizer, schedule, shuffling RNG, epoch count,
History), rolls back to the last epoch boundary on an interruption, and saves and resumes runs
through io/; ``callbacks.py`` holds History and the hooks (EarlyStopping, ModelCheckpoint,
ResetStates).
"""

from .callbacks import Callback, EarlyStopping, History, ModelCheckpoint, ResetStates
from .trainer import Trainer, make_optimizer, make_scheduler

__all__ = [
    "Trainer",
    "History",
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "ResetStates",
    "make_optimizer",
    "make_scheduler",
]
