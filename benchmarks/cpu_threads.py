"""Small-op programs on a few-core CPU: every core against one pinned core, one run.

FMD's edit is a conjugate-gradient ``while_loop`` whose body is a handful of
small products (a Gauss-Newton matvec of FMD's MLP on 200 samples). On a
2-vCPU VM identical warm calls of it took 0.06 s or 0.6-0.7 s, with both CPUs
idle during the slow ones, and every call was fast when the process was
pinned to one core. This benchmark isolates that: the same jitted program,
timed in a child process that may use every CPU and in one pinned to CPU 0
(``os.sched_setaffinity`` before JAX starts, so XLA sizes its thread pool to
one core). Workloads:

- ``cg while_loop``: 35 conjugate-gradient iterations of ``(JᵀJ + I) v`` for
  the 3·28·28→100→100→10 tanh MLP on 200 inputs (256k parameters), in a
  ``lax.while_loop``;
- ``cg unrolled``: the same 35 iterations traced as straight-line code;
- ``gemm 1024``: one 1024³ product, where threads should help.

Median, min and max over ``--calls`` warm calls. Linux only (CPU affinity).

Usage::

    python benchmarks/cpu_threads.py [--out benchmarks/results] [--tag cpu] [--calls 15]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKLOADS = ("cg while_loop", "cg unrolled", "gemm 1024")
ITERS = 35


def _programs():
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    k = jax.random.split(jax.random.key(0), 6)
    params = {"w1": jax.random.normal(k[0], (3 * 28 * 28, 100)) * 0.03,
              "w2": jax.random.normal(k[1], (100, 100)) * 0.1, "w3": jax.random.normal(k[2], (100, 10)) * 0.1}
    x = jax.random.normal(k[3], (200, 3 * 28 * 28))
    flat0, unravel = ravel_pytree(params)
    b = jax.random.normal(k[4], flat0.shape)

    def logits(flat):
        p = unravel(flat)
        h = jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"])
        return h @ p["w3"]

    def setup(flat):
        _, jvp = jax.linearize(logits, flat)
        vjp = jax.linear_transpose(jvp, flat)
        matvec = lambda v: vjp(jvp(v))[0] + v  # noqa: E731

        def body(s):
            xx, r, p, rs, i = s
            ap = matvec(p)
            a = rs / jnp.vdot(p, ap)
            xx, r = xx + a * p, r - a * ap
            rn = jnp.vdot(r, r)
            return xx, r, r + rn / rs * p, rn, i + 1

        return body, (jnp.zeros_like(b), b, b, jnp.vdot(b, b), 0)

    @jax.jit
    def cg_loop(flat):
        body, s = setup(flat)
        return jax.lax.while_loop(lambda s: s[4] < ITERS, body, s)[0]

    @jax.jit
    def cg_unrolled(flat):
        body, s = setup(flat)
        for _ in range(ITERS):
            s = body(s)
        return s[0]

    a = jax.random.normal(k[5], (1024, 1024))
    gemm = jax.jit(lambda m: m @ m)
    return {"cg while_loop": (cg_loop, flat0), "cg unrolled": (cg_unrolled, flat0), "gemm 1024": (gemm, a)}


def child(calls: int) -> dict:
    """In the child process: every workload, compiled once, then ``calls`` timed warm calls."""
    out = {}
    for name, (fn, arg) in _programs().items():
        fn(arg).block_until_ready()
        ts = []
        for _ in range(calls):
            t = time.perf_counter()
            fn(arg).block_until_ready()
            ts.append(time.perf_counter() - t)
        out[name] = ts
    return out


def run_child(cpus: set[int] | None, calls: int) -> dict:
    code = ("import os, sys, json; sys.path.insert(0, %r); "
            "cpus = json.loads(sys.argv[1]); "
            "cpus is None or os.sched_setaffinity(0, set(cpus)); "
            "import cpu_threads; print(json.dumps(cpu_threads.child(int(sys.argv[2]))))") % str(HERE)
    res = subprocess.run([sys.executable, "-c", code, json.dumps(None if cpus is None else sorted(cpus)), str(calls)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--calls", type=int, default=15)
    args = p.parse_args(argv)
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("cpu_threads.py needs Linux (os.sched_setaffinity)")
    every = sorted(os.sched_getaffinity(0))
    runs = {"every CPU": run_child(None, args.calls), "CPU 0 only": run_child({every[0]}, args.calls)}
    rows = []
    for w in WORKLOADS:
        pinned = statistics.median(runs["CPU 0 only"][w])
        for label, res in runs.items():
            ts = res[w]
            rows.append({"workload": w, "cpus": label if label != "every CPU" else f"every CPU ({len(every)})",
                         "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                         "median_vs_pinned": statistics.median(ts) / pinned, "calls": ts})
    sys.path.insert(0, str(HERE))
    from _common import md_table, write_results

    table = md_table(["workload", "CPUs", "median s", "min s", "max s", "median ÷ pinned"],
                     [[r["workload"], r["cpus"], f"{r['median_s']:.4f}", f"{r['min_s']:.4f}", f"{r['max_s']:.4f}",
                       f"{r['median_vs_pinned']:.2f}"] for r in rows])
    notes = __doc__.split("Usage::")[0].split("\n", 1)[1].strip()
    paths = write_results("cpu_threads", args.tag, rows, table, args.out, notes=notes,
                          extra={"calls": args.calls, "iterations": ITERS})
    print(table)
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
