"""A character-level language model trained on the Zen of Python, then sampled.

The text ships with Python (the ``this`` module, ROT13-encoded); the model reads ``WINDOW``
one-hot characters and predicts the next with cross-entropy. Run: ``python examples/char_lm.py``.

``python examples/char_lm.py --tbptt`` trains a per-step model instead (a prediction at every
character, ``many_to_many=True``) on long contiguous stretches of the text, with truncated
backpropagation through time over chunks of ``CHUNK`` characters and the state carried from
chunk to chunk and from batch to batch (``stateful=True``), then samples it with a stream.
"""

import argparse
import contextlib
import io

import numpy as np

import eigenlstm as el

WINDOW = 24
STREAMS = 4  # rows of a batch: the text is read as this many contiguous streams
STRETCH = 32  # characters of each stream in one batch
CHUNK = 8  # characters per truncated-BPTT chunk (one optimizer step each)


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


def stretches(ids, eye, streams: int = STREAMS, stretch: int = STRETCH):
    """Per-step inputs x (S*B, stretch, V) and next-character labels y (S*B, stretch) of the
    character ids ``ids``, laid out for a stateful fit with ``batch_size=streams`` (B).

    The text is cut into ``streams`` contiguous streams of ``S * stretch`` characters (the
    remainder dropped); sample ``i * streams + r`` is stretch ``i`` of stream ``r``, so row
    ``r`` of batch ``i`` continues row ``r`` of batch ``i - 1``: a stateful fit carries each
    stream's state through the whole text.
    """
    S = (len(ids) - 1) // (streams * stretch)  # stretches per stream (labels need one more)
    n = S * stretch
    rows = np.arange(streams)[:, None] * n + np.arange(n)  # (streams, n): stream r's positions
    # (streams, S, stretch) -> (S, streams, stretch) -> (S * streams, stretch): batch-major
    order = rows.reshape(streams, S, stretch).transpose(1, 0, 2).reshape(S * streams, stretch)
    return eye[ids[order]], ids[order + 1]


def per_step_data(text: str, held_out: float = 0.15):
    """Training stretches (see :func:`stretches`), the held-out end of the text as one
    sequence (x_val (1, T, V), y_val (1, T)), and the vocabulary."""
    vocab = sorted(set(text))
    ids = np.array([vocab.index(c) for c in text])
    eye = np.eye(len(vocab), dtype=np.float32)
    cut = int(len(ids) * (1 - held_out))
    x, y = stretches(ids[:cut], eye)
    held = ids[cut:]
    return (x, y), (eye[held[:-1]][None], held[1:][None]), vocab


def train_per_step(
    epochs: int = 30, tbptt: int | None = CHUNK, seed: int = 0, progress: bool = True
):
    """A per-step model trained on :func:`per_step_data`: with ``tbptt`` (chunks of that many
    characters, the state carried through the streams), or with full backpropagation through
    each stretch (``tbptt=None``, shuffled stretches from zero states). The history holds the
    held-out loss and accuracy of every epoch (``val_loss``, ``val_accuracy``). Returns
    (model, vocab, history)."""
    (x, y), held, vocab = per_step_data(zen_text())
    V = len(vocab)
    model = el.LSTMModel(V, 96, V, many_to_many=True, seed=seed)
    trainer = el.Trainer(model)
    carry = {} if tbptt is None else {"tbptt": tbptt, "stateful": True, "shuffle": False}
    history = trainer.fit(
        x,
        y,
        epochs=epochs,
        batch_size=STREAMS,
        loss="cross_entropy",
        lr=1e-2,
        clip_grad_norm=1.0,
        seed=seed,
        validation_data=held,
        progress=progress,
        **carry,
    )
    return model, vocab, history


def sample_stream(model, vocab, prompt: str, length: int = 300, temperature: float = 0.5, seed=0):
    """Continue ``prompt`` with a per-step model, one character per stream step: the state
    carries the whole text so far, as in training."""
    rng = np.random.default_rng(seed)
    eye = np.eye(len(vocab), dtype=np.float32)
    stream = model.stream(batch_size=1)
    logits = stream(eye[[vocab.index(c) for c in prompt]][None])[0, -1]  # read the prompt
    out = list(prompt)
    for _ in range(length):
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        i = int(rng.choice(len(vocab), p=p / p.sum()))
        out.append(vocab[i])
        logits = stream(eye[[i]])[0]
    return "".join(out)


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tbptt", action="store_true", help="a per-step model, truncated BPTT")
    if parser.parse_args().tbptt:
        model, vocab, history = train_per_step()
        best = int(np.argmin(history.history["val_loss"]))
        print(f"best held-out loss {history.history['val_loss'][best]:.3f} (epoch {best + 1})")
        generate = sample_stream
    else:
        model, vocab, history = train()
        generate = sample
    loss = history.history["loss"]
    print(
        f"{len(vocab)} characters; training loss {loss[0]:.3f} -> {loss[-1]:.3f} "
        f"(uniform guessing: {np.log(len(vocab)):.3f})"
    )
    print("\n--- sample (temperature 0.5) ---")
    print(generate(model, vocab, "Beautiful is better than "))
