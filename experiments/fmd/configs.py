"""Configurations of the FMD experiment (SPEC §5, §8).

``offline``:

- Colored MNIST: the 5,000 offline MNIST digits (4,000 train, 1,000 test) on
  ReBias colour backgrounds at ρ = 0.99 (40 bias-conflicting training
  digits); FMD's MLP 3·28·28→100→100→100→10, 20 epochs of Adam 1e-3, batch 64,
  no decay. External pairs: 100 test digits (seeded), each on its class colour
  and on one random other colour; the other 900 test digits measure B (every
  other colour: 8,100 pairs) and accuracy on the biased (ρ = 1) and unbiased
  (ρ = 0.1) colourings.
- Adult: ``../shared/data/adult.data`` (skipped when absent), 80/20 split
  stratified by label, protected sex (and race), MLP 108→64→32→2, 10 epochs
  of Adam 1e-3, batch 256. External: 100 test records with the protected
  field flipped (race: every other value); the other test records measure
  B, accuracy and the demographic-parity gap.

``fashion`` (issue 39, part 1): Colored Fashion-MNIST at full scale, chunked. The 60,000 Fashion-MNIST
training images (IDX files in ``<repo>/../shared/data/fashion-mnist``; ``--data-dir`` overrides) have 6,000
per class; ρ = 0.99 gives int(6000 · 0.99) = 5,940 of each class its own background colour and 60 one of the
9 others, so 600 bias-conflicting training images (1 %), as in FMD's Colored MNIST setting. Test: the 10,000
test images; 100 of them (seeded) give the external pairs, the other 9,900 measure B (89,100 pairs, every
other colour) and the biased (ρ = 1) / unbiased (ρ = 0.1) accuracies. FMD's MLP 3·28·28→100→100→100→10,
20 epochs of Adam 1e-3, batch 64, weight decay 1e-4 (the offline schedule; one epoch measured at 2.1 s).
Cells: (seed, model) with model = the biased model, FMD (1 or 5 Newton steps; last layer or all layers),
fine-tuning the last layer or all layers on the same pairs.

Every FMD variant is compared with fine-tuning the same block on the same
pairs (full-batch Adam 1e-3), its number of steps chosen by the same rule as
FMD's step scale (smallest B on the pairs within 3 points of accuracy).
"""

from __future__ import annotations

import os

#: How to read the tables (appended to the markdown).
NOTES = """\
Reading. FMD's edit is one Newton step: a linear move of the parameters whose
size is set on the external pairs. On offline Colored MNIST the biased MLP has
learned colour and little else (40 bias-conflicting training digits; its
unbiased accuracy is near chance), and its confident softmax has almost no
curvature on the factual samples, so the quadratic model does not see that a
larger step destroys the factual predictions: past a small scale B and the
factual accuracy fall together. Fine-tuning on the same pairs learns new
features over many steps and does better, at several to tens of times the
cost (the `seconds` column: 200 Adam steps against one compiled edit).

Newton steps (`steps=5`): each step re-linearises at the edited parameters and
is kept only if it lowers B on the pairs within the same 3-point accuracy
budget. On Colored MNIST this takes FMD from −2 % to −35 % (last layer) and
from −11 % to −41 % (all layers) and raises the unbiased accuracy by 13-17
points (`seconds`: on the 2-core VM these tables ran on, the same warm edit
of all layers took 0.06 s or 0.6-0.7 s from call to call, the CPU idle in the
slow ones; docs/speed.md). The budget is kept on the 100 factual pairs
(1 point per digit); on the 900 held-out digits the biased accuracy falls by
about 5 points, like fine-tuning's. None of the edits reaches −50 % here: the
100 pairs are the only digits the model could learn shape from. On Adult the
later steps move the held-out B by less than half a percentage point.

On Adult the model is mildly biased and the edit works, most clearly when it
unlearns the training records with the largest influence on B ("training
data" mode). B on held-out pairs can move differently from B on the 100
external pairs the scale is chosen on; the held-out numbers are the ones
reported.
"""

_ADULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "adult.data")

VARIANTS = {
    "FMD last layer": {"params": "last"},
    "FMD all layers": {"params": "all", "damping": 1.0},
    "FMD all layers, balanced accuracy kept": {"params": "all", "damping": 1.0, "accuracy_on": "both"},
    "FMD training data, top-100 (last layer)": {"mode": "training", "params": "last", "top_k": 100},
    "FMD last layer, 5 Newton steps": {"params": "last", "steps": 5},
    "FMD all layers, 5 Newton steps": {"params": "all", "damping": 1.0, "steps": 5},
}

OFFLINE = {
    "seeds": [0, 1, 2],
    "external": 100,
    "variants": VARIANTS,
    "datasets": {
        "colored_mnist": {"dataset": "biased_mnist", "rho": 0.99, "source": "offline",
                          "base": {"epochs": 20, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4,
                                   "hidden": [100, 100, 100]}},
        "adult_sex": {"dataset": "adult", "data_path": _ADULT, "protected": "sex",
                      "base": {"epochs": 10, "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4, "hidden": [64, 32]}},
        "adult_race": {"dataset": "adult", "data_path": _ADULT, "protected": "race",
                       "base": {"epochs": 10, "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4, "hidden": [64, 32]}},
    },
}

FULL = {**OFFLINE, "datasets": {**OFFLINE["datasets"],
                                "colored_mnist": {**OFFLINE["datasets"]["colored_mnist"], "source": "tfds"}}}

#: How to read the ``fashion`` table (appended to its markdown); numbers from results_fashion.jsonl (33 cells).
NOTES_FASHION = """\
Reading (measured on this 2-core CPU under `nice -n 10` with other jobs running; `seconds` are noisy at that
load, e.g. 20 steps timed faster than 5). **The FMD criterion is not met at this scale**: no FMD cell and no
fine-tuning cell (30 edited cells, 3 seeds) cuts the held-out B by ≥ 50 % within 3 points of biased-test
accuracy. Within the 3-point budget the largest cuts are −31 % (fine-tuning the last layer, seed 1) and
−29 % (FMD all layers, 5 steps, 1-point budget, seed 1); the mean-best FMD row within budget is FMD all layers,
1 Newton step (−25.6 ± 11.0 %, −2.5 ± 3.6 points, 0.2 s) against fine-tuning the last layer (−28.5 ± 2.6 %,
−1.0 ± 0.5 points, 0.24 s). The closest FMD cell is −45.5 % at −3.5 points (all layers, 5 steps, 1-point
budget, seed 0); the only cell past −50 % is fine-tuning all layers (seed 2, −52.5 %) at −6.9 points.

Measured reason. (1) The step scale and the Newton steps are chosen on the 100 external pairs, and the edit
over-fits them: B on those pairs falls by −52 ± 14 % (last layer, 5 steps) and −46 ± 11 % (all layers,
5 steps), on the 89,100 held-out pairs by only −36 ± 9 % and −38 ± 9 %. (2) The accuracy budget is kept on the
same 100 factual images (1 image = 1 point), which hides the held-out loss: every 5-step edit kept ≤ 3 points on
the pairs and lost 6.5-6.9 points (mean) on the 9,900 held-out biased test images. With the budget tightened
to 1 point on the pairs the held-out loss is 3.4 ± 1.4 points and the cut −39.6 ± 9.3 %, still short of both
halves of the criterion. (3) More Newton steps do not help: with 20 steps every step after the 4th-6th is
rejected (scale 0) because the accuracy budget is spent, and the rows equal the 5-step ones. Fine-tuning
picks the largest step count tried (200) on every seed (its pair accuracy rises as it trains on the pairs),
so its row is bounded by that grid, not by the rule; the 1-point-budget baseline is therefore identical.
With 600 bias-conflicting training images the base already reads the garments partly (unbiased accuracy
43 %, B = 0.65, against near-chance on the 4,000-digit offline sample), yet 100 pairs do not carry enough
shape signal to move the held-out B by half without costing biased accuracy.
"""

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_FASHION = os.path.join(_REPO, "..", "shared", "data", "fashion-mnist")

#: Issue 39 part 1, chunked (``--budget-minutes``): one (seed, cell) per line of ``results_fashion.jsonl``.
FASHION = {
    "chunked": True,
    "seeds": [0, 1, 2],
    "external": 100,
    "data": {"dataset": "biased_mnist", "rho": 0.99, "source": "dir", "images": "fashion_mnist",
             "data_dir": os.path.normpath(_FASHION)},
    # 1 epoch (937 steps of batch 64) measured at 2.1 s steady state (6.0 s with compilation) on the 2-core
    # CPU under nice 10 with other jobs running: the offline schedule (20 epochs) costs under a minute.
    "base": {"epochs": 20, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "hidden": [100, 100, 100]},
    "variants": {
        "FMD last layer, 1 Newton step": {"params": "last"},
        "FMD last layer, 5 Newton steps": {"params": "last", "steps": 5},
        "FMD all layers, 1 Newton step": {"params": "all", "damping": 1.0},
        "FMD all layers, 5 Newton steps": {"params": "all", "damping": 1.0, "steps": 5},
        # probes of why the criterion is (not) met: more steps; a stricter accuracy budget on the pairs (1 point
        # = 1 of the 100 factual pair images) so that the held-out biased accuracy stays within 3 points
        "FMD last layer, 20 Newton steps": {"params": "last", "steps": 20},
        "FMD all layers, 20 Newton steps": {"params": "all", "damping": 1.0, "steps": 20},
        "FMD all layers, 5 Newton steps, 1-point budget": {"params": "all", "damping": 1.0, "steps": 5,
                                                            "max_acc_drop": 0.01},
    },
    # the baselines: the same block fine-tuned on the same 100 pairs (full-batch Adam 1e-3, its number of
    # steps chosen by FMD's rule); the hparams only name the block (and the accuracy rule).
    "finetune": {
        "fine-tune last layer (same pairs)": {"params": "last"},
        "fine-tune all layers (same pairs)": {"params": "all", "damping": 1.0},
        "fine-tune all layers (same pairs), 1-point budget": {"params": "all", "damping": 1.0, "max_acc_drop": 0.01},
    },
}

CONFIGS = {"offline": OFFLINE, "full": FULL, "fashion": FASHION}
