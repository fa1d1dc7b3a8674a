"""The seed workloads as a benchmark table: fastad beside NumPy (and JAX / PyTorch when
installed), all measured in the same run. Used by ``python -m fastad`` and ``benches/compare.py``."""
from __future__ import annotations

import timeit
from typing import Callable, List, Optional, Tuple

import numpy as np

import fastad as fa


def median_seconds(fn: Callable[[], object], min_time: float = 0.2, repeat: int = 7) -> float:
    """Median over `repeat` timing runs of the per-call time, each run lasting about `min_time`."""
    fn()
    number, elapsed = 1, 0.0
    while elapsed < min_time / 4:
        number *= 2
        elapsed = timeit.timeit(fn, number=number)
    number = max(1, int(number * (min_time / max(elapsed, 1e-9))))
    return float(np.median(timeit.repeat(fn, number=number, repeat=repeat)) / number)


def eam(x):
    rho = fa.sum(fa.exp(-3.0 * (x + 1.0)))
    return rho**2 + rho**3 + 0.25 * rho**4


def eam_numpy(x):
    rho = np.exp(-3.0 * (x + 1.0)).sum()
    return rho**2 + rho**3 + 0.25 * rho**4


def eam_grad_numpy(x, g):
    e = np.exp(-3.0 * (x + 1.0))
    rho = e.sum()
    np.multiply(e, -3.0 * (2 * rho + 3 * rho**2 + rho**3), out=g)
    return rho**2 + rho**3 + 0.25 * rho**4


def _peer_jax(n: int) -> List[Tuple[str, Callable[[], object]]]:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return []
    jax.config.update("jax_enable_x64", True)

    def f(x):
        rho = jnp.sum(jnp.exp(-3.0 * (x + 1.0)))
        return rho**2 + rho**3 + 0.25 * rho**4

    vg = jax.jit(jax.value_and_grad(f))
    x = jnp.asarray(np.random.default_rng(0).random(n))
    return [("JAX jit(value_and_grad)", lambda: jax.block_until_ready(vg(x)))]


def _peer_torch(n: int) -> List[Tuple[str, Callable[[], object]]]:
    try:
        import torch
    except ImportError:
        return []
    x = torch.tensor(np.random.default_rng(0).random(n), requires_grad=True)

    def run():
        x.grad = None
        rho = torch.exp(-3.0 * (x + 1.0)).sum()
        (rho**2 + rho**3 + 0.25 * rho**4).backward()

    return [("PyTorch autograd", run)]


def eam_rows(n: int, peers: bool) -> List[Tuple[str, float]]:
    x = np.random.default_rng(0).random(n)
    g = np.empty(n)
    f = fa.compile(eam, fa.spec((n,), np.float64))
    cases = [
        ("NumPy value (primal)", lambda: eam_numpy(x)),
        ("NumPy hand-written gradient", lambda: eam_grad_numpy(x, g)),
        ("fastad value f(x)", lambda: f(x)),
        ("fastad value_and_grad(x, out=g)", lambda: f.value_and_grad(x, out=g)),
    ]
    if peers:
        cases += _peer_jax(n) + _peer_torch(n)
    return [(name, median_seconds(fn)) for name, fn in cases]


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:9.2f} µs"
    return f"{seconds * 1e3:9.2f} ms"


def run(peers: bool = True, sizes: Optional[List[int]] = None) -> None:
    """Prints the seed workloads' table: median time per call and the ratio to NumPy's primal."""
    print(f"fastad {fa.__version__} — {fa.get_num_threads()} threads; medians of 7 runs\n")
    for n in sizes or [100, 10_000]:
        rows = eam_rows(n, peers)
        base = rows[0][1]
        print(f"Seed 003, EAM f(x) = ρ² + ρ³ + ρ⁴/4, x ∈ R^{n}, float64")
        print(f"  {'':34s} {'median':>12s}   {'÷ NumPy value':>13s}")
        for name, t in rows:
            print(f"  {name:34s} {_fmt(t)}   {t / base:12.2f}×")
        print()
