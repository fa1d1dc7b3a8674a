"""The README's quick start, runnable: seed 003's EAM function and a small batched loss."""
import numpy as np

import fastad as fa


def eam(x):
    rho = fa.sum(fa.exp(-3.0 * (x + 1.0)))
    return rho**2 + rho**3 + 0.25 * rho**4


f = fa.compile(eam, fa.spec((100,), np.float64))
x = np.random.default_rng(0).random(100)
g = np.empty(100)
v = f.value_and_grad(x, out=g)
print(f"EAM value {v:.6f}, |grad| = {np.linalg.norm(g):.6f}, program: {f}")

before = fa.allocation_count()
for _ in range(1000):
    f.value_and_grad(x, out=g)
print(f"native heap allocations in 1000 replays: {fa.allocation_count() - before}")


def loss(W, b, X, y):
    return fa.mean((fa.tanh(X @ W.T + b) - y) ** 2)


rng = np.random.default_rng(1)
W, b = rng.normal(size=(1, 3)), np.zeros(1)
X, y = rng.normal(size=(50, 3)), rng.normal(size=(50, 1))
f = fa.compile(loss, W, b, fa.spec((None, 3)), fa.spec((None, 1)), wrt=(0, 1))
gW, gb = np.empty_like(W), np.empty_like(b)
for step in range(200):  # plain gradient descent
    val = f.value_and_grad(W, b, X, y, out=(gW, gb))
    W -= 0.1 * gW
    b -= 0.1 * gb
print(f"loss after 200 steps: {val:.4f}")

layer = fa.compile(lambda W, X: fa.tanh(X @ W.T), W, fa.spec((None, 3)), wrt=1)
dX = layer.vjp(W, X, np.ones((50, 1)))
print(f"input gradient by vjp: shape {dX.shape}")
