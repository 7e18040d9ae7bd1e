"""Forecast monthly airline passengers (1949-1960) with an LSTM, through the eigenlstm CLI.

Runs ``eigenlstm train`` on the embedded data (the same as ``python -m eigenlstm train``), then
``eigenlstm predict`` from the checkpoint it wrote, then the same from Python with the API.
Run: ``python examples/forecast_airline.py [OUT_DIR]`` (default runs/airline).
"""

import sys

import eigenlstm as el
from eigenlstm import data, forecast
from eigenlstm.cli import main

out = sys.argv[1] if len(sys.argv) > 1 else "runs/airline"

# 1. The command line: train (prints held-out RMSE vs the naive forecast, writes model + PNG).
status = main(["train", "--out", out])
if status != 0:
    sys.exit(status)

# 2. Forecast the next 12 months (1961) from the checkpoint.
main(["predict", "--model", f"{out}/model.npz", "--steps", "12"])

# 3. The same from Python: load the checkpoint and forecast from the embedded series.
model = el.load(f"{out}/model.npz")
series = data.load_dataset("airline")
print("next 3 months:", forecast.forecast(model, series.values, steps=3).round(1))
