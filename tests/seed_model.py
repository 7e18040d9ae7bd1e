"""The seed's PyTorch model, verbatim (its comments translated): the torch witness that the
training-layer and ONNX tests compare el.LSTMModel and its exports with."""

import torch
import torch.nn as tnn


class SeedLSTMModel(tnn.Module):
    """LSTM then a Linear layer on the last time step, with zero initial states."""

    def __init__(self, input_size, hidden_size, output_size, num_layers=1):
        super(SeedLSTMModel, self).__init__()  # noqa: UP008 - as the seed writes it
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        # LSTM layer
        self.lstm = tnn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        # fully connected output layer
        self.fc = tnn.Linear(hidden_size, output_size)

    def forward(self, x):
        # initial hidden state (h0, c0)
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size)
        c0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size)
        # LSTM forward pass
        out, _ = self.lstm(x, (h0, c0))
        # output of the last time step
        out = self.fc(out[:, -1, :])
        return out
