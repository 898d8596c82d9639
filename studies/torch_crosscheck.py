"""Cross-check of the training evidence with PyTorch's own cells (needs torch).

Trains ``torch.nn.LSTM`` and ``torch.nn.GRU`` on exactly the data, model shape and
optimiser settings of ``studies/training_evidence.py`` (the same ``gruablate`` task
generators and test split, hidden 64, batch 32, Adam with global-norm clipping at 1,
PyTorch's default initialisation with the LSTM forget bias set to 1 as gruablate's spec
does) and prints the test metric per seed. If PyTorch's LSTM sits on the same plateau
as gruablate's, the plateau is a property of the cell and the settings, not a bug.

    python studies/torch_crosscheck.py                 # adding (T = 100) and copy (delay 50)
    python studies/torch_crosscheck.py adding          # one task
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from gruablate.tasks import make_task

SEEDS = (0, 1, 2)
HIDDEN, BATCH, CLIP = 64, 32, 1.0
SETTINGS = {
    "adding": dict(steps=1500, lr=3e-3, options=dict(seq_len=100)),
    "copy": dict(steps=3000, lr=1e-2, options=dict(delay=50)),
}


class Net(torch.nn.Module):
    def __init__(self, cell: str, n_in: int, n_out: int, tokens: bool, last: bool) -> None:
        super().__init__()
        self.tokens, self.last, self.n_in = tokens, last, n_in
        rnn = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        self.rnn = rnn(n_in, HIDDEN)
        if cell == "lstm":  # gruablate's lstm spec: forget bias 1 (one bias vector only)
            with torch.no_grad():
                self.rnn.bias_ih_l0[HIDDEN : 2 * HIDDEN] = 1.0
                self.rnn.bias_hh_l0[HIDDEN : 2 * HIDDEN] = 0.0
        self.out = torch.nn.Linear(HIDDEN, n_out)

    def forward(self, x: np.ndarray) -> torch.Tensor:
        if self.tokens:
            t = torch.nn.functional.one_hot(torch.as_tensor(x), self.n_in).float()
        else:
            t = torch.as_tensor(x, dtype=torch.float32)
        y, _ = self.rnn(t)
        return self.out(y[-1] if self.last else y)


def loss_fn(task, z: torch.Tensor, y: np.ndarray) -> torch.Tensor:
    if task.loss == "mse":
        return torch.nn.functional.mse_loss(z, torch.as_tensor(y, dtype=torch.float32))
    return torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]),
                                             torch.as_tensor(y).reshape(-1))


def run(task_name: str, cell: str, seed: int) -> float:
    cfg = SETTINGS[task_name]
    task = make_task(task_name, **cfg["options"])
    torch.manual_seed(seed)
    net = Net(cell, task.input_size, task.output_size, task.tokens, task.readout == "last")
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    batches = task.train_batches(np.random.default_rng([seed, 1]), BATCH)
    for _ in range(cfg["steps"]):
        b = next(batches)
        opt.zero_grad()
        loss = loss_fn(task, net(b.x), b.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        opt.step()

    def predict(x, state):
        with torch.no_grad():
            return net(x).double().numpy(), state

    return task.evaluate(predict, "test")[task.metric_name]


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    for task_name in argv or list(SETTINGS):
        base = make_task(task_name, **SETTINGS[task_name]["options"]).baseline
        for cell in ("lstm", "gru"):
            t0 = time.perf_counter()
            scores = [run(task_name, cell, s) for s in SEEDS]
            print(f"torch {cell:4s} {task_name:6s} test metric per seed"
                  f" {' / '.join(f'{m:.4f}' for m in scores)} (baseline {base:.4f}),"
                  f" {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
