"""A model trained in Keras, fine-tuned in eigenlstm and served by ONNX Runtime.

1. Keras (torch backend) trains an LSTM -> Dense forecaster of a sine wave and saves it (.keras).
2. ``el.keras.load`` reads it (no Keras needed) as an ``el.LSTMModel`` that predicts what Keras
   predicts.
3. ``el.Trainer(model).fit`` fine-tunes it on a shifted wave (another frequency and amplitude).
4. ``el.onnx.export`` writes it as ONNX, and ONNX Runtime serves it with eigenlstm's outputs.

Run: ``python examples/keras_to_onnx.py [OUT_DIR]`` (default runs/keras_to_onnx). Needs keras,
onnx and onnxruntime (``pip install ".[test]"``).
"""

import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 on torch: no TensorFlow needed

import numpy as np

import eigenlstm as el

WINDOW = 20  # steps read per forecast


def windows(freq: float, amp: float, n: int, seed: int):
    """``n`` noisy windows of a sine wave (N, WINDOW, 1) and the value after each (N, 1)."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, 2 * np.pi / freq, n)
    t = start[:, None] + np.arange(WINDOW + 1)[None, :]
    wave = amp * np.sin(freq * t) + 0.05 * rng.standard_normal(t.shape)
    return wave[:, :WINDOW, None].astype(np.float32), wave[:, WINDOW:].astype(np.float32)


def main(out_dir="runs/keras_to_onnx", keras_epochs=8, finetune_epochs=15, verbose=True):
    """Run the four steps; return the measured errors and losses as a dict."""
    import keras
    import onnxruntime as ort

    say = print if verbose else (lambda *a, **k: None)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Train in Keras and save.
    keras.utils.set_random_seed(0)
    x, y = windows(freq=0.3, amp=1.0, n=512, seed=0)
    kmodel = keras.Sequential(
        [keras.Input((None, 1)), keras.layers.LSTM(16), keras.layers.Dense(1)]
    )
    kmodel.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    kmodel.fit(x, y, epochs=keras_epochs, batch_size=32, verbose=0)
    kmodel.save(out / "forecaster.keras")

    # 2. Load into eigenlstm: the same predictions as Keras's.
    model = el.keras.load(out / "forecaster.keras")
    x_test, _ = windows(freq=0.3, amp=1.0, n=64, seed=1)
    keras_err = float(np.max(np.abs(model.predict(x_test) - kmodel.predict(x_test, verbose=0))))
    say(f"loaded {type(model).__name__}; max |eigenlstm - Keras| = {keras_err:.2g}")

    # 3. Fine-tune on a shifted wave.
    x_new, y_new = windows(freq=0.45, amp=1.5, n=512, seed=2)
    x_val, y_val = windows(freq=0.45, amp=1.5, n=128, seed=3)
    trainer = el.Trainer(model)
    before = trainer.evaluate(x_val, y_val)["loss"]
    trainer.fit(
        x_new, y_new, epochs=finetune_epochs, batch_size=32, lr=3e-3, seed=0, progress=False
    )
    after = trainer.evaluate(x_val, y_val)["loss"]
    say(f"held-out MSE on the shifted wave: {before:.4f} before fine-tuning, {after:.4f} after")

    # 4. Export to ONNX and serve with ONNX Runtime.
    el.onnx.export(model, out / "forecaster.onnx")
    session = ort.InferenceSession(str(out / "forecaster.onnx"), providers=["CPUExecutionProvider"])
    served = session.run(["output"], {"input": x_val})[0]
    ort_err = float(np.max(np.abs(served - model.predict(x_val))))
    say(f"ONNX Runtime serves it: max |ORT - eigenlstm| = {ort_err:.2g}")
    return {"keras_err": keras_err, "loss_before": before, "loss_after": after, "ort_err": ort_err}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/keras_to_onnx")
