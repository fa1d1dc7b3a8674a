"""fastad's matrix product beside NumPy's BLAS (and JAX's jit when installed), measured side by
side in one run on the shapes of issue 14: fastad through ``fa.compile(lambda a, b: a @ b)``
writing into ``out=``, NumPy through ``np.matmul(out=)``, JAX through ``jax.jit(a @ b)``.

Each cell is the median of the per-call medians of several interleaved rounds (fastad, NumPy,
JAX, fastad, …), so a slow spell of the shared machine hits all three. Ratios are times
(below 1.0: fastad is faster). NumPy's BLAS uses the threads its environment gives it
(``OPENBLAS_NUM_THREADS``); fastad uses ``FASTAD_NUM_THREADS`` (default: all cores).

    python benches/gemm_vs_blas.py            # every shape, f32 and f64
    python benches/gemm_vs_blas.py --rounds 9
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import fastad as fa
from fastad._bench import jax_or_none, median_seconds

SHAPES = [(1024, 1024, 1024), (4096, 784, 512), (4096, 512, 512), (10000, 1000, 20),
          (10000, 20, 1000)]


def _candidates(m: int, k: int, n: int, dtype) -> dict:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    C = np.empty((m, n), dtype)
    product = fa.compile(lambda a, b: a @ b, A, B)
    runs = {"fastad": lambda: product(A, B, out=C), "NumPy": lambda: np.matmul(A, B, out=C)}
    jax = jax_or_none()
    if jax is not None:
        jitted = jax.jit(lambda a, b: a @ b)
        a, b = jax.numpy.asarray(A), jax.numpy.asarray(B)
        runs["JAX"] = lambda: jax.block_until_ready(jitted(a, b))
    expected = A.astype(np.float64) @ B.astype(np.float64)
    product(A, B, out=C)
    scale = np.abs(expected).max()
    assert np.abs(C - expected).max() <= 1e-3 * scale, "fastad's product is wrong"
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"instruction set: {fa.instruction_set()}; fastad threads: {fa.get_num_threads()}; "
          f"NumPy BLAS threads: {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    print("| product m×k×n | dtype | fastad ms | NumPy ms | JAX ms | fastad ÷ NumPy | "
          "fastad ÷ JAX | fastad GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (np.float32, np.float64):
        for m, k, n in SHAPES:
            runs = _candidates(m, k, n, dtype)
            times = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, fn in runs.items():
                    times[name].append(median_seconds(fn, min_time=0.1, repeat=3))
            med = {name: float(np.median(t)) for name, t in times.items()}
            jax_ms = f"{med['JAX'] * 1e3:.2f}" if "JAX" in med else "—"
            jax_ratio = f"{med['fastad'] / med['JAX']:.2f}" if "JAX" in med else "—"
            print(f"| {m}×{k}×{n} | {np.dtype(dtype).name} | {med['fastad'] * 1e3:.2f} | "
                  f"{med['NumPy'] * 1e3:.2f} | {jax_ms} | {med['fastad'] / med['NumPy']:.2f} | "
                  f"{jax_ratio} | {2 * m * k * n / med['fastad'] * 1e-9:.1f} |", flush=True)


if __name__ == "__main__":
    main()
