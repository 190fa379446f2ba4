"""Region attribution maps: all patches in one compiled call vs per-window loops.

For a batch of 128×128×3 images and the paper's grid (32×32 patches, stride 2:
49×49 = 2,401 windows per image), times, in one run:

- ``batched``: :func:`jaxbias.attribution.make_map_fn` — every patch of every
  image gathered, classified (chunks of ``jaxbias.attribution.default_chunk()``
  patches, 256 on CPU, inside one ``lax.map``), scored
  (top softmax) and averaged to pixels by :func:`jaxbias.attribution.pixel_map`,
  one compiled call;
- ``loop (batch per window)``: a Python loop over the 2,401 windows; each
  slices the window from all images, calls the jitted classifier + confidence
  once, and adds the result to a NumPy map (``map[y:y+k, x:x+k] += c``);
- ``loop (per image, per window)``: the paper's algorithm literally — one
  jitted classifier call per window and image (2,401·B calls of one patch).

Both loops produce the same maps as the batched call (checked). Rows for three
region-classifier sizes: a tiny one (stages 4/8/16, ResNet-18's 7×7/2 stem +
max-pool), the offline experiment's (8/16/32, 3×3/1 stem) and the library's
default (16/32/64, 3×3/1 stem). A last row times :func:`pixel_map` alone
against the NumPy loop over windows (confidences given).

Target (issue 6): batched ≥ 20× faster than the per-window loop.

Reading: the classifier's arithmetic is the same in the batched call and in
the loops. On a CPU the batched call is compute-bound, so it can only save
the loops' per-call overhead and their poorer use of the cores; the 20×
target holds for the pixel-space step (``pixel_map``) but not end to end. On
an accelerator a one-patch call leaves the device idle and the ratio is
expected to be much larger; run this script there with ``--tag gpu``.

Usage::

    python benchmarks/region_maps.py [--out benchmarks/results] [--tag cpu] [--batch 4]
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
try:
    import jaxbias  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import md_table, time_fn, write_results  # noqa: E402

from jaxbias import attribution as A  # noqa: E402

SIZE, PATCH, STRIDE = 128, 32, 2
NETS = {
    "tiny 4/8/16, 7×7/2 stem": dict(widths=(4, 8, 16), stem="imagenet"),
    "experiment 8/16/32, 3×3/1 stem": dict(widths=(8, 16, 32), stem="small"),
    "default 16/32/64, 3×3/1 stem": dict(widths=(16, 32, 64), stem="small"),
}


def _wall(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def _minmax(m):
    lo = m.min(axis=(-2, -1), keepdims=True)
    span = m.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1), 0.0)


def bench_net(name, kw, x, repeats):
    loc = A.grid_locations(SIZE, patch=PATCH, stride=STRIDE)
    p = loc.shape[0]
    b = x.shape[0]
    net = A.small(num_positions=p, **kw)
    v = A.init_variables(net, jax.random.key(0), patch=PATCH, channels=3)

    def logits_fn(variables, patches, positions):
        return net.apply(variables, patches, positions=positions, train=False)[0]

    maps = A.make_map_fn(logits_fn, image_size=SIZE, patch=PATCH, stride=STRIDE)  # default chunk for the device
    t_batched = time_fn(maps, v, jnp.asarray(x), repeats=repeats, warmup=1, budget_s=30)
    ref = np.asarray(maps(v, jnp.asarray(x)))

    conf_fn = jax.jit(lambda variables, patches, positions: A.confidence(logits_fn(variables, patches, positions)))
    xn = np.asarray(x)

    def loop_batch():
        total = np.zeros((b, SIZE, SIZE))
        count = np.zeros((SIZE, SIZE))
        for i, (cx, cy) in enumerate(loc):
            c = np.asarray(conf_fn(v, xn[:, cy : cy + PATCH, cx : cx + PATCH], np.full((b,), i, np.int32)))
            total[:, cy : cy + PATCH, cx : cx + PATCH] += c[:, None, None]
            count[cy : cy + PATCH, cx : cx + PATCH] += 1
        return _minmax(total / count)

    def loop_single():
        total = np.zeros((b, SIZE, SIZE))
        count = np.zeros((SIZE, SIZE))
        for n in range(b):
            for i, (cx, cy) in enumerate(loc):
                c = float(conf_fn(v, xn[n : n + 1, cy : cy + PATCH, cx : cx + PATCH], np.full((1,), i, np.int32))[0])
                total[n, cy : cy + PATCH, cx : cx + PATCH] += c
                if n == 0:
                    count[cy : cy + PATCH, cx : cx + PATCH] += 1
        return _minmax(total / count)

    conf_fn(v, xn[:, :PATCH, :PATCH], np.zeros((b,), np.int32)).block_until_ready()  # compile both shapes first
    conf_fn(v, xn[:1, :PATCH, :PATCH], np.zeros((1,), np.int32)).block_until_ready()
    t_loop, out_loop = _wall(loop_batch, 1)
    t_single, out_single = _wall(loop_single, 1)
    for out in (out_loop, out_single):
        np.testing.assert_allclose(out, ref, atol=2e-3)  # same maps (batch-norm in eval mode: no batch effects)
    patches = b * p
    return {
        "what": f"maps, {name}", "images": b, "patches": patches,
        "batched_s": t_batched["median_s"], "batched_compile_s": t_batched["compile_s"],
        "loop_batch_s": t_loop, "loop_single_s": t_single,
        "batched_patches_per_s": patches / t_batched["median_s"],
        "loop_batch_patches_per_s": patches / t_loop, "loop_single_patches_per_s": patches / t_single,
        "speedup_vs_loop_batch": t_loop / t_batched["median_s"],
        "speedup_vs_loop_single": t_single / t_batched["median_s"],
    }


def bench_pixel_map(b, repeats):
    loc = A.grid_locations(SIZE, patch=PATCH, stride=STRIDE)
    conf = np.random.default_rng(0).uniform(size=(b, loc.shape[0])).astype(np.float32)
    f = jax.jit(lambda c: A.pixel_map(c, loc, patch=PATCH, image_size=SIZE))
    t_vec = time_fn(f, jnp.asarray(conf), repeats=repeats * 5, warmup=2, budget_s=10)

    def loop():
        total = np.zeros((b, SIZE, SIZE))
        count = np.zeros((SIZE, SIZE))
        for i, (cx, cy) in enumerate(loc):
            total[:, cy : cy + PATCH, cx : cx + PATCH] += conf[:, i, None, None]
            count[cy : cy + PATCH, cx : cx + PATCH] += 1
        return total / count

    t_loop, out = _wall(loop, 3)
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(conf))), out, rtol=1e-5, atol=1e-6)
    patches = b * loc.shape[0]
    return {
        "what": "pixel_map only (confidences given)", "images": b, "patches": patches,
        "batched_s": t_vec["median_s"], "batched_compile_s": t_vec["compile_s"], "loop_batch_s": t_loop,
        "loop_single_s": None, "batched_patches_per_s": patches / t_vec["median_s"],
        "loop_batch_patches_per_s": patches / t_loop, "loop_single_patches_per_s": None,
        "speedup_vs_loop_batch": t_loop / t_vec["median_s"], "speedup_vs_loop_single": None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--batch", type=int, default=4, help="images per batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nets", default=None, help="comma-separated subset of the classifier rows (by index)")
    a = p.parse_args(argv)
    x = np.random.default_rng(0).uniform(size=(a.batch, SIZE, SIZE, 3)).astype(np.float32)
    chosen = list(NETS.items())
    if a.nets:
        chosen = [chosen[int(i)] for i in a.nets.split(",")]
    rows = []
    for name, kw in chosen:
        rows.append(bench_net(name, kw, x, a.repeats))
        print(rows[-1], flush=True)
    rows.append(bench_pixel_map(a.batch, a.repeats))
    print(rows[-1], flush=True)
    table = md_table(
        ["what", "images", "patches", "batched s", "loop (batch/window) s", "loop (image/window) s",
         "batched patches/s", "loop (batch/window) patches/s", "loop (image/window) patches/s",
         "speedup vs batch/window loop", "speedup vs image/window loop", "batched compile s"],
        [[r["what"], r["images"], r["patches"], r["batched_s"], r["loop_batch_s"], r["loop_single_s"],
          r["batched_patches_per_s"], r["loop_batch_patches_per_s"], r["loop_single_patches_per_s"],
          r["speedup_vs_loop_batch"], r["speedup_vs_loop_single"], r["batched_compile_s"]] for r in rows])
    write_results("region_maps", a.tag, rows, table, a.out, extra={"image_size": SIZE, "patch": PATCH,
                                                                   "stride": STRIDE, "batch": a.batch},
                  notes=__doc__.split("Usage::")[0].strip())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
