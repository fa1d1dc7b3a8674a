"""Seed 000: a 1 → 1000 → 20 → 1 network on 10,000 inputs, its outputs fed to the user's own
scalar function, and the gradient with respect to every weight and bias.

    python examples/dense_network.py
"""
import time

import numpy as np

import fastad as fa

rng = np.random.default_rng(0)
# The seed's network, with its randn weights (fa.Dense takes weight (out, in) and bias).
sizes = [1, 1000, 20, 1]
model = fa.Chain(*[fa.Dense(i, o, weight=rng.standard_normal((o, i)), bias=rng.standard_normal(o))
                   for i, o in zip(sizes, sizes[1:])])
X = np.linspace(-1, 1, 10_000)[:, None]

# 1. The seed's objective, sum of squares of the outputs, as a built-in loss.
g = np.empty_like(model.params)
t = time.perf_counter()
value = model.value_and_grad(X, loss="sse", out=g)
print(f"sum of squares = {value:.6e}, |gradient| = {np.linalg.norm(g):.6e} "
      f"(first call, includes compiling: {1e3 * (time.perf_counter() - t):.1f} ms)")

# 2. Your own downstream function of the outputs: evaluate the network, differentiate your
#    function by hand (or with fa.compile), pull its gradient back with vjp.
Y = np.empty((10_000, 1))
model(X, out=Y)
downstream = np.sum(Y**2)            # the same function, so the gradients must agree
dY = 2 * Y                           # d downstream / dY
g2 = np.empty_like(g)
model.vjp(X, dY, out=g2)
assert np.allclose(g, g2, rtol=1e-10, atol=0), "vjp and value_and_grad disagree"
assert np.isclose(downstream, value, rtol=1e-12)

# 3. Steady state: replays allocate nothing.
before = fa.allocation_count()
for name, call in [("forward model(X, out=Y)", lambda: model(X, out=Y)),
                   ("value_and_grad(X, out=g)", lambda: model.value_and_grad(X, loss="sse", out=g))]:
    times = []
    for _ in range(5):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    print(f"{name:28s} {1e3 * np.median(times):7.2f} ms")
assert fa.allocation_count() == before, "a replay allocated"
