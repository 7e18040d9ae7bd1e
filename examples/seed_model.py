"""The seed's PyTorch ``LSTMModel`` example, run with eigenlstm in place of torch.

Line for line the code of the seed (a batch-first LSTM, then a Linear layer on the last time
step); only ``torch.zeros``/``torch.randn`` become NumPy. Run: ``python examples/seed_model.py``.
"""

import numpy as np

import eigenlstm as el
import eigenlstm.nn as nn  # in place of: import torch; import torch.nn as nn


# 定义 LSTM 模型 (define the LSTM model)
class LSTMModel(nn.Module):
    def __init__(self, input_size, hidden_size, output_size, num_layers=1):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        # LSTM 层 (LSTM layer)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        # 全连接输出层 (fully connected output layer)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        # 初始化隐藏状态 (h0, c0) (initial hidden state)
        h0 = np.zeros((self.num_layers, x.shape[0], self.hidden_size), dtype=np.float32)
        c0 = np.zeros((self.num_layers, x.shape[0], self.hidden_size), dtype=np.float32)
        # LSTM 前向传播 (LSTM forward pass)
        out, _ = self.lstm(x, (h0, c0))
        # 取最后时间步的输出 (take the output of the last time step)
        out = self.fc(out[:, -1, :])
        return out


# 示例：输入大小=10，隐藏层=20，输出大小=2 (example: input 10, hidden 20, output 2)
model = LSTMModel(input_size=10, hidden_size=20, output_size=2)
x = np.random.randn(5, 7, 10).astype(np.float32)  # noqa: NPY002 - the seed's torch.randn
y = model(x)
print(y.shape)  # 输出: (5, 2)

# The same model ships as el.LSTMModel, with backward, predict and checkpoints (el.Trainer
# trains it); its state_dict keys are the seed's (lstm.weight_ih_l0, ..., fc.weight, fc.bias).
builtin = el.LSTMModel(input_size=10, hidden_size=20, output_size=2)
builtin.load_state_dict(model.state_dict())
assert np.allclose(builtin(x), y, rtol=1e-6, atol=1e-6)
print(sorted(builtin.state_dict()))
