"""Classify scikit-learn's bundled 8x8 digits with an LSTM: the 8 image rows are 8 time steps.

Trains ``el.LSTMModel`` with ``el.Trainer``: the cross-entropy loss, a validation split, early
stopping and a cosine schedule; nothing is downloaded. Run: ``python examples/digits_classification.py``.
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import eigenlstm as el


def load(seed=0):
    """(x_train, x_test, y_train, y_test): images of shape (N, 8 rows, 8 pixels) in [0, 1]."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    return train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )


def train(seed=0, epochs=40, progress=True):
    """Train and return (model, history, held-out accuracy)."""
    x_train, x_test, y_train, y_test = load(seed)
    model = el.LSTMModel(input_size=8, hidden_size=64, output_size=10, seed=seed)
    stop = el.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
    trainer = el.Trainer(model)
    history = trainer.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=32,
        loss="cross_entropy",
        lr=1e-2,
        lr_schedule="cosine",
        clip_grad_norm=1.0,
        validation_data=(x_test, y_test),
        callbacks=[stop],
        seed=seed,
        progress=progress,
    )
    accuracy = trainer.evaluate(x_test, y_test)["accuracy"]  # the run's loss: cross-entropy
    return model, history, accuracy


if __name__ == "__main__":
    model, history, accuracy = train()
    print(f"epochs run: {len(history.epoch)}; best val_loss {min(history.history['val_loss']):.4f}")
    print(f"held-out accuracy: {accuracy:.1%} on {len(load()[1])} images")
