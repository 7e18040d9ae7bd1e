"""A character-level language model trained on the Zen of Python, then sampled.

The text ships with Python (the ``this`` module, ROT13-encoded); the model reads ``WINDOW``
one-hot characters and predicts the next with cross-entropy. Run: ``python examples/char_lm.py``.
"""

import contextlib
import io

import numpy as np

import eigenlstm as el

WINDOW = 24


def zen_text() -> str:
    """The Zen of Python, decoded from ``this.s`` (importing ``this`` prints it: silence that)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return "".join(this.d.get(c, c) for c in this.s)


def dataset(text: str, window: int = WINDOW):
    """One-hot windows x of shape (N, window, V), next-character labels y (N,), and the vocabulary."""
    vocab = sorted(set(text))
    ids = np.array([vocab.index(c) for c in text])
    eye = np.eye(len(vocab), dtype=np.float32)
    starts = np.arange(len(ids) - window)
    x = eye[ids[starts[:, None] + np.arange(window)]]
    y = ids[starts + window]
    return x, y, vocab


def sample(
    model, vocab, prompt: str, length: int = 300, temperature: float = 0.5, seed: int = 0
) -> str:
    """Continue ``prompt`` by ``length`` characters, drawing from softmax(logits / temperature)."""
    rng = np.random.default_rng(seed)
    eye = np.eye(len(vocab), dtype=np.float32)
    ids = [vocab.index(c) for c in prompt]
    for _ in range(length):
        x = eye[ids[-WINDOW:]][None]
        logits = model.predict(x)[0].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(vocab), p=p / p.sum())))
    return "".join(vocab[i] for i in ids)


def train(epochs: int = 40, seed: int = 0, progress: bool = True):
    """Train the model; returns (model, vocab, history)."""
    x, y, vocab = dataset(zen_text())
    model = el.LSTMModel(input_size=len(vocab), hidden_size=96, output_size=len(vocab), seed=seed)
    trainer = el.Trainer(model)
    history = trainer.fit(
        x,
        y,
        epochs=epochs,
        batch_size=64,
        loss="cross_entropy",
        lr=1e-2,
        lr_schedule="cosine",
        clip_grad_norm=1.0,
        seed=seed,
        progress=progress,
    )
    return model, vocab, history


if __name__ == "__main__":
    model, vocab, history = train()
    loss = history.history["loss"]
    print(
        f"{len(vocab)} characters; training loss {loss[0]:.3f} -> {loss[-1]:.3f} "
        f"(uniform guessing: {np.log(len(vocab)):.3f})"
    )
    print("\n--- sample (temperature 0.5) ---")
    print(sample(model, vocab, "Beautiful is better than "))
