"""Seed 002 end to end: train Dense(1→32, sigmoid) → Dense(32→1) on the toy regression data with
Adam (200 epochs, one sample per step, L2 penalty ½λ²‖θ‖²), then a Laplace approximation around
the trained weights (the full generalised Gauss-Newton matrix), its prior precision and noise σ
fitted by the marginal likelihood, and the predictive mean ± 2 standard deviations.

    python examples/laplace_regression.py        # writes laplace_regression.png with matplotlib
"""
import time

import numpy as np

import fastad as fa

rng = np.random.default_rng(0)
n, noise = 128, 0.3
X = rng.uniform(0, 8, (n, 1)).astype(np.float32)  # LaplaceRedux's toy_data_regression
Y = (np.sin(X) + noise * rng.standard_normal((n, 1))).astype(np.float32)

model = fa.Chain(fa.Dense(1, 32, "sigmoid"), fa.Dense(32, 1), dtype=np.float32, seed=0)
t = time.perf_counter()
hist = model.fit(X, Y, loss="mse", optimizer=fa.Adam(), epochs=200, batch_size=1, shuffle=False,
                 l2=0.01)
print(f"trained 200 epochs × {n} Adam steps in {(time.perf_counter() - t) * 1e3:.1f} ms; "
      f"loss {hist[0]:.4f} → {hist[-1]:.4f}")

# The prior the training's l2 implies, at σ = 1, then both fitted by the marginal likelihood.
t = time.perf_counter()
la = fa.Laplace(model, "regression", prior_precision="l2").fit(X, Y)
print(f"prior precision from l2=0.01: {la.prior_precision:.4g}; "
      f"log marginal likelihood {la.log_marginal_likelihood():.2f}")
la.optimize_prior_precision()
xs = np.linspace(-2, 10, 200, dtype=np.float32)[:, None]
mean, var = la.predict(xs)
print(f"fitted prior precision {la.prior_precision:.4g}, σ = {la.sigma_noise:.3f} (the data's "
      f"noise: {noise}); log marginal likelihood {la.log_marginal_likelihood():.2f}; "
      f"fit + optimise + predict in {(time.perf_counter() - t) * 1e3:.1f} ms")

mean, std = mean[:, 0], np.sqrt(var[:, 0])
inside = np.abs(np.sin(xs[:, 0]) - mean) < 2 * std
print(f"predictive std: {std[(xs[:, 0] > 0) & (xs[:, 0] < 8)].mean():.3f} inside the data, "
      f"{std[xs[:, 0] > 9].mean():.3f} beyond it; sin(x) within ±2σ at {inside.mean():.0%} of points")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no plot")
else:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(X[:, 0], Y[:, 0], s=8, color="k", label="data")
    ax.plot(xs[:, 0], mean, label="network (MAP)")
    ax.fill_between(xs[:, 0], mean - 2 * std, mean + 2 * std, alpha=0.3, label="±2σ (Laplace)")
    ax.plot(xs[:, 0], np.sin(xs[:, 0]), "--", color="gray", label="sin(x)")
    ax.legend()
    fig.savefig("laplace_regression.png", dpi=120, bbox_inches="tight")
    print("wrote laplace_regression.png")
