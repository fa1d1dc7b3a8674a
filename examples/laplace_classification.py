"""A Laplace approximation for a classifier: two moons, a small tanh network trained with
cross-entropy, then the last-layer and the all-weights Laplace (Kronecker factors), the prior
fitted by the marginal likelihood, and the MAP against the Laplace (probit) predictive: far
from the data the Laplace probabilities fall back towards ½ instead of staying near 0 or 1.

    python examples/laplace_classification.py    # writes laplace_classification.png with matplotlib
"""
import numpy as np

import fastad as fa


def two_moons(n, noise, rng):
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    X = np.stack([x, y], 1) + noise * rng.standard_normal((n, 2))
    return X, (~upper).astype(np.int64)


rng = np.random.default_rng(0)
X, labels = two_moons(400, 0.1, rng)
model = fa.Chain(fa.Dense(2, 32, "tanh"), fa.Dense(32, 32, "tanh"), fa.Dense(32, 2), seed=0)
hist = model.fit(X, labels, loss="cross_entropy", optimizer=fa.Adam(0.01), epochs=300,
                 batch_size=32, l2=0.01)
accuracy = (model(X).argmax(1) == labels).mean()
print(f"trained: loss {hist[0]:.3f} → {hist[-1]:.3f}, training accuracy {accuracy:.1%}")

grid = np.stack(np.meshgrid(np.linspace(-3, 4, 120), np.linspace(-2.5, 3, 100)), -1).reshape(-1, 2)
logits = model(grid)
p_map = np.exp(logits - logits.max(1, keepdims=True))
p_map /= p_map.sum(1, keepdims=True)
for subset in ("last_layer", "all"):
    la = fa.Laplace(model, "classification", subset=subset, hessian="kron").fit(X, labels)
    la.optimize_prior_precision()
    p_la = la.predict(grid)
    far = np.abs(grid).max(1) > 2.5
    print(f"{subset:10s}: prior precision {la.prior_precision:.3g}, log marginal likelihood "
          f"{la.log_marginal_likelihood():.1f}; confidence far from the data: MAP "
          f"{p_map[far].max(1).mean():.3f}, Laplace {p_la[far].max(1).mean():.3f}")
mc = la.predict(grid[::50], link="mc", n_samples=2000, seed=0)
print(f"probit against 2,000 samples: largest difference {np.abs(mc - p_la[::50]).max():.3f}")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no plot")
else:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    shape = (100, 120)
    for ax, p, title in ((axes[0], p_map, "MAP"), (axes[1], p_la, "Laplace (probit)")):
        c = ax.contourf(grid[:, 0].reshape(shape), grid[:, 1].reshape(shape),
                        p[:, 1].reshape(shape), levels=np.linspace(0, 1, 11), cmap="RdBu_r")
        ax.scatter(X[:, 0], X[:, 1], c=labels, s=6, cmap="RdBu_r", edgecolors="k",
                   linewidths=0.2)
        ax.set_title(f"{title}: p(class 1)")
    fig.colorbar(c, ax=axes)
    fig.savefig("laplace_classification.png", dpi=120, bbox_inches="tight")
    print("wrote laplace_classification.png")
