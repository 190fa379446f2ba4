"""The CPU's matrix-product ceiling for the convolution shapes of issue 8: XLA vs OpenBLAS vs PyTorch, one run.

``jaxbias.models.conv`` builds the convolution derivatives from matrix
products that XLA:CPU runs. This benchmark asks how fast those products can
be on this machine at all, per library, for the shapes they have in the
Biased-MNIST network (batch 256, 7×7 kernels, 28×28 outputs):

- ``Gw row``: the weight gradient per image and kernel row,
  ``(kw·C_in × H·W) · (H·W × C_out)``;
- ``im2col fwd``: one image's forward as a product of its patch matrix,
  ``(H·W × k²·C_in) · (k²·C_in × C_out)``;
- ``col2im Gx``: one image's input gradient before the scatter-add,
  ``(H·W × C_out) · (C_out × k²·C_in)``;
- a square 2048³ product for reference.

Libraries: ``xla`` = ``jnp.dot`` under ``jax.jit`` (Eigen, what our
convolution runs on); ``numpy`` = NumPy's BLAS (OpenBLAS in the wheels);
``torch`` = ``torch.mm`` (oneDNN/MKL), when PyTorch is installed. GFLOP/s
(2·m·k·n per product) of the fastest call over ``--repeats`` round-robin
turns of 3 calls each, with a 0.3 s rest before every turn (OpenMP pools
spin for a while after a call and would slow the next library down).

Usage::

    python benchmarks/gemm_cpu.py [--out benchmarks/results] [--tag cpu] [--repeats 10]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import md_table, torch_available, write_results  # noqa: E402

#: (name, m, k, n) for the Biased-MNIST network's conv3 (32→64) and conv4 (64→128), and a square product.
SHAPES = [
    ("conv4 Gw row", 7 * 64, 784, 128),
    ("conv4 im2col fwd", 784, 49 * 64, 128),
    ("conv4 col2im Gx", 784, 128, 49 * 64),
    ("conv3 Gw row", 7 * 32, 784, 64),
    ("conv3 im2col fwd", 784, 49 * 32, 64),
    ("square 2048", 2048, 2048, 2048),
]


#: Seconds of rest before each library's turn, and its calls per turn.
PAUSE_S, CALLS = 0.3, 3


def _libraries(use_torch: bool):
    xla_dot = jax.jit(jnp.dot)
    libs = {
        "xla": (lambda a, b: (jnp.asarray(a), jnp.asarray(b)), lambda a, b: xla_dot(a, b).block_until_ready()),
        "numpy": (lambda a, b: (a, b), lambda a, b: a @ b),
    }
    if use_torch:
        import torch

        libs["torch"] = (lambda a, b: (torch.from_numpy(a), torch.from_numpy(b)), torch.mm)
    return libs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--torch", choices=["auto", "on", "off"], default="auto")
    a = p.parse_args(argv)
    use_torch = a.torch == "on" or (a.torch == "auto" and torch_available())
    libs = _libraries(use_torch)
    rng = np.random.default_rng(0)
    rows = []
    for name, m, k, n in SHAPES:
        x = rng.standard_normal((m, k), dtype=np.float32)
        y = rng.standard_normal((k, n), dtype=np.float32)
        args = {lib: prep(x, y) for lib, (prep, _) in libs.items()}
        ref = x.astype(np.float64) @ y.astype(np.float64)
        best = {}
        for lib, (_, call) in libs.items():  # warm up (compile) and check the product
            out = np.asarray(call(*args[lib]))
            err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
            if not err < 1e-4:
                raise RuntimeError(f"{lib} product of {name} is wrong (relative error {err:.2e})")
            best[lib] = np.inf
        for _ in range(a.repeats):  # round-robin: every library sees the same machine state
            for lib, (_, call) in libs.items():
                time.sleep(PAUSE_S)  # let the previous library's worker threads stop spinning
                for _ in range(CALLS):
                    t0 = time.perf_counter()
                    call(*args[lib])
                    best[lib] = min(best[lib], time.perf_counter() - t0)
        flops = 2.0 * m * k * n
        row = {"shape": name, "m": m, "k": k, "n": n, "gflop": flops / 1e9,
               **{f"{lib}_gflops": flops / best[lib] / 1e9 for lib in libs}}
        for lib in libs:
            if lib != "xla":
                row[f"{lib}_over_xla"] = best["xla"] / best[lib]
        rows.append(row)
        print(row, flush=True)
    cols = ["shape", "m", "k", "n", *[f"{lib}_gflops" for lib in libs],
            *[f"{lib}_over_xla" for lib in libs if lib != "xla"]]
    notes = (__doc__.split("Usage::")[0].split("\n", 2)[2].strip() + "\n\n"
             "Reading: `*_over_xla` > 1 means that library's product is that many times faster than XLA's on this "
             "machine. The convolution derivatives of `jaxbias.models.conv` cannot run faster than XLA's product "
             "of the same shape (issue 8).")
    write_results("gemm", a.tag, rows, md_table(cols, [[r.get(c) for c in cols] for r in rows]), a.out,
                  extra={"repeats": a.repeats, "torch": use_torch}, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
