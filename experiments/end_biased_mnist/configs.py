"""Configurations of the EnD Biased-MNIST experiment.

``full``: the EnD paper's protocol on the full MNIST (tensorflow-datasets):
ρ ∈ {0.999, 0.997, 0.995, 0.990}, Adam lr 1e-3, weight decay 1e-4, batch 256,
80 epochs, lr × 0.1 every 20 epochs, the full 16/32/64/128 network, 5 seeds.

``offline``: the same comparison on the 5,000 offline digits (4,000 train),
shortened so that it runs on a 2-core CPU: ρ = 0.99 (and 0.995), 3 seeds,
the narrower network of the demo and fewer epochs.
"""
from __future__ import annotations

FULL = {
    "source": "tfds",
    "rhos": [0.999, 0.997, 0.995, 0.990],
    "seeds": [0, 1, 2, 3, 4],
    "epochs": 80,
    "batch_size": 256,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "decay_every": 20,
    "channels": [16, 32, 64, 128],
    "methods": {"vanilla": {}, "end": {"alpha": 1.0, "beta": 0.5}},
}

OFFLINE = {
    "source": "offline",
    "rhos": [0.99, 0.995],
    "seeds": [0, 1, 2],
    "epochs": 12,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "decay_every": 8,
    "channels": [8, 16, 32, 64],
    "methods": {"vanilla": {}, "end": {"alpha": 1.0, "beta": 0.5}},
}

CONFIGS = {"full": FULL, "offline": OFFLINE}
