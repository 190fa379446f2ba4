"""Configurations of the EnD Biased-MNIST experiment.

``full``: the EnD paper's protocol on the full MNIST (tensorflow-datasets):
ρ ∈ {0.999, 0.997, 0.995, 0.990}, Adam lr 1e-3, weight decay 1e-4, batch 256,
80 epochs, lr × 0.1 every 20 epochs, the full 16/32/64/128 network with a tanh
last block (EnD's released network), 5 seeds. The paper tuned α and β per ρ
by a Bayesian search over [0, 1]; those values are not published per ρ, so
``full`` uses one setting for all ρ and ``--alpha/--beta`` override it.

``offline``: the same comparison on the 5,000 offline digits (4,000 train),
shortened so that it runs on a 2-core CPU in about half an hour: ρ ∈ {0.99,
0.995}, 3 seeds, the demo's narrower 4/8/16/32 network, batch 64, 12 epochs
with the learning rate × 0.1 after 8. α = 5, β = 1 came from a small hand
sweep at ρ = 0.99, seed 0 (unbiased-test accuracy after 8–16 epochs: (α, β) =
(1, 0.5) 0.10, (2, 2) 0.10, (3, 3) 0.14, (4, 2) 0.25 at 16 epochs, (5, 1) 0.22,
(5, 5) 0.17, (10, 2) 0.17; Vanilla 0.10), so it is tuned on the seeds it is
reported on: a demonstration, not a held-out result. With only 40
bias-conflicting training digits the weights must be larger than the released
defaults (α = β = 0.1).
"""
from __future__ import annotations

import os

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
    "last_activation": "tanh",
    "methods": {"vanilla": {}, "end": {"alpha": 1.0, "beta": 0.5}},
}

OFFLINE = {
    "source": "offline",
    "rhos": [0.99, 0.995],
    "seeds": [0, 1, 2],
    "epochs": 12,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "decay_every": 8,
    "channels": [4, 8, 16, 32],
    "last_activation": "tanh",
    "methods": {"vanilla": {}, "end": {"alpha": 5.0, "beta": 1.0}},
}

#: issue 39, part 2: Biased Fashion-MNIST (the 60,000 + 10,000 real images from the IDX files in
#: ``<repo>/../shared/data/fashion-mnist``), coloured as ReBias colours MNIST except the foreground: every pixel of
#: value 0 (the background, and any pure-black pixel inside a garment) takes the colour, every other pixel keeps its
#: grey level in all three channels (``foreground grey``: ReBias's white foreground would turn a garment into a flat
#: silhouette and erase the texture that tells a shirt from a pullover). The authors' protocol for α and β: the
#: validation set is 10,000 training images recoloured at ρ = 0.1; each (α, β) of a small grid over the released
#: range is trained at ρ = 0.99 (seed 0) and the one with the best validation accuracy is used for every seed and
#: ρ (the paper searched per ρ; ``fashion_full`` does). Test sets are never looked at to choose. The schedule is
#: the largest that fits in 6 chunks of 18 minutes on a 2-core CPU (4 search runs + 12 runs): one epoch of the
#: 4/8/16/32 network at batch 256 took 166 s on the 2-core AMD EPYC (a 1-epoch run 189 s with data, compilation
#: and the three evaluations), the 8/16/32/64 one 432 s; 2 epochs of the narrow network make 16 runs of ~360 s.
FASHION = {
    "chunked": True,
    "source": "dir",
    "images": "fashion_mnist",
    "data_dir": os.path.normpath(os.path.join(_REPO, os.pardir, "shared", "data", "fashion-mnist")),
    "foreground": "grey",
    "validation": 10000,
    "rhos": [0.99, 0.997],
    "seeds": [0, 1, 2],
    "epochs": 2,
    "batch_size": 256,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "decay_every": None,
    "channels": [4, 8, 16, 32],
    "last_activation": "tanh",
    "search": {"rhos": [0.99], "seed": 0, "grid": [[0.1, 0.1], [1.0, 0.5], [1.0, 1.0], [5.0, 1.0]]},
    "methods": {"vanilla": {}, "end": "search"},
}

#: Reading of ``results_fashion.md`` (16 cells, seeds 0-2, 2-core AMD EPYC): EnD beats Vanilla in every seed at
#: both ρ, by more than the seed spread: unbiased test +7.4 ± 4.8 points at ρ 0.99 (12.2 → 19.6 %) and +6.8 ± 3.3
#: at ρ 0.997 (10.8 → 17.6 %); bias-conflicting +10.1 and +9.1 (Vanilla 2.4 % and 1.0 %: it reads the colour
#: alone). The price is biased-test accuracy, 99.7 → 82-84 %. Both stay near chance next to what the paper reports
#: on Biased MNIST digits after 80 epochs: here 2 epochs of the narrow network, and α, β chosen from a 4-point grid;
#: the validation scores of the whole grid were 16-18 %, so the choice was made among models that had not yet
#: learnt the garments. ``seconds`` vary 176-1,503 s for the same work with the
#: load of other jobs; alone, a cell took 176-182 s (the schedule was sized from a 166 s epoch measured earlier,
#: so about 4 epochs would fit the same 6 chunks).
#: The paper's full grid on Biased Fashion-MNIST, for an accelerator: 4 ρ, 80 epochs (lr × 0.1 every 20), EnD's
#: 16/32/64/128 network, batch 256, an (α, β) search per ρ on the validation set, 3 seeds; one command, no budget.
#: Expected cost: 24 search runs + 24 runs = 48 runs × 80 epochs = 3,840 epochs of 60,000 images. On the 2-core
#: CPU an epoch of the 8/16/32/64 network took 432 s (the 16/32/64/128 one about 4× the convolution work), so
#: this grid is out of reach there (~2 CPU-months); no accelerator was lent to measure it, so its device time is
#: an estimate: at one epoch per 2-5 s (60,000 28×28 images through a 4-block network, data on the device), 2-6
#: hours.
FASHION_FULL = {
    **FASHION,
    "rhos": [0.999, 0.997, 0.995, 0.990],
    "epochs": 80,
    "decay_every": 20,
    "channels": [16, 32, 64, 128],
    "search": {"rhos": [0.999, 0.997, 0.995, 0.990], "seed": 0,
               "grid": [[0.1, 0.1], [0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [2.0, 1.0], [5.0, 1.0]]},
}

CONFIGS = {"full": FULL, "offline": OFFLINE, "fashion": FASHION, "fashion_full": FASHION_FULL}
