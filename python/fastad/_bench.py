"""The seed workloads as a benchmark table: fastad beside NumPy (and JAX / PyTorch when
installed), all measured in the same run. Used by ``python -m fastad`` and ``benches/compare.py``."""
from __future__ import annotations

import functools
import os
import platform
import sys
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


def median_of_single_runs(fn: Callable[[], object], repeat: int = 3,
                          warm_up: float = 0.25) -> float:
    """Median of `repeat` single calls, for workloads that take tens of milliseconds or more,
    after calls for `warm_up` seconds: the first calls after an idle spell can run slower (on
    the Xeon a 10,000-row forward pass took 28 ms for each of its first 7 calls, 20 ms from the
    8th on, and 29 ms every time with 0.2 s of sleep between calls: the clock ramping up, as
    far as can be seen from inside a virtual machine)."""
    start = timeit.default_timer()
    while True:
        fn()
        if timeit.default_timer() - start >= warm_up:
            break
    return float(np.median(timeit.repeat(fn, number=1, repeat=repeat)))


def eam(x):
    rho = fa.sum(fa.exp(-3.0 * (x + 1.0)))
    return rho**2 + rho**3 + 0.25 * rho**4


def eam_numpy(x):
    rho = np.exp(-3.0 * (x + 1.0)).sum()
    return rho**2 + rho**3 + 0.25 * rho**4


@functools.lru_cache(maxsize=None)
def jax_or_none():
    """JAX with float64 enabled, or None where it is not installed or cannot run: jaxlib is
    built for AVX and refuses a CPU without it (RuntimeError), such as benches/as_cpu.sh sse4
    presents. Imported once: a second import after that failure fails otherwise."""
    try:
        import jax
        import jax.numpy  # noqa: F401
    except (ImportError, RuntimeError):
        return None
    jax.config.update("jax_enable_x64", True)
    return jax


def eam_grad_numpy(x, g):
    e = np.exp(-3.0 * (x + 1.0))
    rho = e.sum()
    np.multiply(e, -3.0 * (2 * rho + 3 * rho**2 + rho**3), out=g)
    return rho**2 + rho**3 + 0.25 * rho**4


def _peer_jax(n: int) -> List[Tuple[str, Callable[[], object]]]:
    jax = jax_or_none()
    if jax is None:
        return []
    jnp = jax.numpy

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
    return _timed(cases)


def _seed000_weights(rng: np.random.Generator):
    """Seed 000's network: randn weights and biases, 1 → 1000 → 20 → 1, identity activations."""
    sizes = [1, 1000, 20, 1]
    return [(rng.standard_normal((o, i)), rng.standard_normal(o)) for i, o in zip(sizes, sizes[1:])]


def seed000_rows(peers: bool) -> List[Tuple[str, float]]:
    """Seed 000: sum of squares of a 1→1000→20→1 network's outputs on 10,000 inputs, float64."""
    weights = _seed000_weights(np.random.default_rng(0))
    model = fa.Chain(*[fa.Dense(W.shape[1], W.shape[0], weight=W, bias=b) for W, b in weights])
    X = np.linspace(-1, 1, 10_000)[:, None]
    Y, g = np.empty((10_000, 1)), np.empty(model.n_params)

    def numpy_forward():
        h = X
        for W, b in weights:
            h = h @ W.T + b
        return np.sum(h * h)

    cases = [
        ("NumPy forward (primal)", numpy_forward),
        ("fastad forward model(X, out=Y)", lambda: model(X, out=Y)),
        ("fastad value_and_grad(X, out=g)", lambda: model.value_and_grad(X, loss="sse", out=g)),
    ]
    if peers:
        cases += _seed000_jax(weights, X) + _seed000_torch(weights, X)
    return _timed(cases, repeat=9)


def _timed(cases, repeat: int = 7) -> List[Tuple[str, float]]:
    """Times the cases, fastad's first: NumPy's OpenBLAS threads spin for a while after a
    product and would take the cores from fastad's threads. Returns them in the given order."""
    order = sorted(range(len(cases)), key=lambda i: not cases[i][0].startswith("fastad"))
    times = {i: median_seconds(cases[i][1], repeat=repeat) for i in order}
    return [(cases[i][0], times[i]) for i in range(len(cases))]


def _seed000_jax(weights, X):
    jax = jax_or_none()
    if jax is None:
        return []
    jnp = jax.numpy

    def loss(params, x):
        h = x
        for W, b in params:
            h = h @ W.T + b
        return jnp.sum(h * h)

    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in weights]
    x = jnp.asarray(X)
    fwd, grad = jax.jit(loss), jax.jit(jax.grad(loss))
    return [("JAX jit forward", lambda: jax.block_until_ready(fwd(params, x))),
            ("JAX jit(grad)", lambda: jax.block_until_ready(grad(params, x)))]


def _seed000_torch(weights, X):
    try:
        import torch
    except ImportError:
        return []
    params = [(torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True))
              for W, b in weights]
    x = torch.tensor(X)

    def loss():
        h = x
        for W, b in params:
            h = torch.addmm(b, h, W.T)
        return (h * h).sum()

    def grad():
        for W, b in params:
            W.grad = b.grad = None
        loss().backward()

    def forward():
        with torch.no_grad():
            return loss()

    return [("PyTorch forward", forward), ("PyTorch backward", grad)]


def wide_rows(peers: bool) -> List[Tuple[str, float, float]]:
    """Issue 3's wide layers: 512 → 512 → 512 with tanh, N = 4096, float32, as GFLOP/s beside
    the best GEMM of the run (large square products through fastad's kernel, NumPy's BLAS and,
    with peers, JAX) and, with peers, JAX's jit(value_and_grad) of the same network.
    Rows: (name, seconds, GFLOP)."""
    n, w = 4096, 512
    model = fa.Chain(fa.Dense(w, w, "tanh"), fa.Dense(w, w, "tanh"), dtype=np.float32, seed=0)
    X = np.random.default_rng(0).standard_normal((n, w)).astype(np.float32)
    Y, g = np.empty((n, w), np.float32), np.empty(model.n_params, np.float32)
    gemm = 2.0 * n * w * w * 1e-9  # one layer's product, GFLOP
    # The peak: the best of two large square products through fastad's kernel and NumPy's (and
    # JAX's) product.
    rows = [_gemm_peak_row(1024), _gemm_peak_row(2048)] + _library_gemm_rows(peers)
    rows += [
        ("fastad forward (2 products)", median_seconds(lambda: model(X, out=Y)), 2 * gemm),
        # The reverse sweep: both weight gradients and the first layer's input gradient.
        ("fastad value_and_grad (5 products)",
         median_seconds(lambda: model.value_and_grad(X, loss="sse", out=g)), 5 * gemm),
    ]
    jax_vg = _jax_value_and_grad(model, X, None, "sse") if peers else None
    if jax_vg is not None:
        rows.append(("JAX jit(value_and_grad)", median_seconds(jax_vg), 5 * gemm))
    return rows


def classifier_rows(peers: bool, n: int = 4096) -> List[Tuple[str, float]]:
    """A wide classifier of the size people train on CPUs: 784 → 512 → 512 → 10, tanh, mean
    softmax cross-entropy on integer labels, N = 4096, float32; the loss and the gradient of
    all 670k parameters, fastad beside JAX's jit(value_and_grad) and PyTorch."""
    model = fa.Chain(fa.Dense(784, 512, "tanh"), fa.Dense(512, 512, "tanh"), fa.Dense(512, 10),
                     dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 784)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    g = np.empty(model.n_params, np.float32)
    cases = [("fastad value_and_grad(out=g)",
              lambda: model.value_and_grad(X, labels, loss="cross_entropy", out=g))]
    if peers:
        jax_vg = _jax_value_and_grad(model, X, labels, "cross_entropy")
        if jax_vg is not None:
            cases.append(("JAX jit(value_and_grad)", jax_vg))
        torch_vg = _torch_classifier(model, X, labels)
        if torch_vg is not None:
            cases.append(("PyTorch backward", torch_vg))
    return _timed(cases)


def _jax_value_and_grad(model, X, labels, loss: str):
    """JAX's jit(value_and_grad) of `model`'s loss ("sse", or "cross_entropy" with integer
    labels) with respect to its layers' weights and biases, or None without JAX."""
    jax = jax_or_none()
    if jax is None:
        return None
    jnp = jax.numpy
    acts = {"tanh": jnp.tanh, None: lambda h: h}
    layers = [(jnp.asarray(l.weight), jnp.asarray(l.bias), acts[l.activation])
              for l in model.layers]
    params = [(W, b) for W, b, _ in layers]

    def f(params, x, y):
        h = x
        for (W, b), (_, _, act) in zip(params, layers):
            h = act(h @ W.T + b)
        if loss == "sse":
            return jnp.sum(h * h)
        logp = jax.nn.log_softmax(h, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    vg = jax.jit(jax.value_and_grad(f))
    x = jnp.asarray(X)
    y = jnp.asarray(labels) if labels is not None else None
    return lambda: jax.block_until_ready(vg(params, x, y))


def _torch_classifier(model, X, labels):
    try:
        import torch
    except ImportError:
        return None
    params = [(torch.tensor(l.weight, requires_grad=True), torch.tensor(l.bias, requires_grad=True))
              for l in model.layers]
    x, y = torch.tensor(X), torch.tensor(labels)

    def run():
        h = x
        for i, (W, b) in enumerate(params):
            W.grad = b.grad = None
            h = torch.addmm(b, h, W.T)
            if i < len(params) - 1:
                h = torch.tanh(h)
        torch.nn.functional.cross_entropy(h, y).backward()

    return run


def _seed002_model():
    """Seed 002's network: Dense(1→32, sigmoid), Dense(32→1), float32 (P = 97), N = 128."""
    model = fa.Chain(fa.Dense(1, 32, "sigmoid"), fa.Dense(32, 1), dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 8, (128, 1)).astype(np.float32)  # LaplaceRedux's toy regression data
    Y = (np.sin(X) + 0.3 * rng.standard_normal((128, 1))).astype(np.float32)
    return model, X, Y


def seed002_rows(peers: bool) -> List[Tuple[str, float]]:
    """Seed 002 (Laplace approximation): per-sample gradients (N, P) and their outer products."""
    model, X, Y = _seed002_model()
    n, p = X.shape[0], model.n_params
    G = model.per_sample_grads(X, Y, loss="mse")
    out_g = np.empty_like(G)
    H, Hp = np.empty((n, p, p), np.float32), np.empty((n, p * (p + 1) // 2), np.float32)
    F, d = np.empty((p, p), np.float32), np.empty(p, np.float32)
    cases = [
        ("fastad per_sample_grads(out=G)",
         lambda: model.per_sample_grads(X, Y, loss="mse", out=out_g)),
        ("fastad outer(G, out=H)", lambda: fa.outer(G, out=H)),
        ("fastad outer(G, packed=True, out=)", lambda: fa.outer(G, packed=True, out=Hp)),
        ("fastad outer_sum(G, out=F)", lambda: fa.outer_sum(G, out=F)),
        ("fastad fisher(X, Y, out=F)", lambda: model.fisher(X, Y, loss="mse", out=F)),
        ("fastad outer_diag(G, out=d)", lambda: fa.outer_diag(G, out=d)),
        ("NumPy einsum outer (out=H)", lambda: np.einsum("bi,bj->bij", G, G, out=H)),
        ("NumPy G.T @ G (out=F)", lambda: np.matmul(G.T, G, out=F)),
        ("NumPy H.fill(1), 1 thread", lambda: H.fill(1.0)),
    ]
    if peers:
        cases += _seed002_jax(model, X, Y) + _seed002_torch(model, X, Y)
    return _timed(cases)


def _seed002_jax(model, X, Y):
    jax = jax_or_none()
    if jax is None:
        return []
    jnp = jax.numpy
    (W1, b1), (W2, b2) = [(jnp.asarray(l.weight), jnp.asarray(l.bias)) for l in model.layers]

    def loss(params, x, y):
        (W1, b1), (W2, b2) = params
        h = jax.nn.sigmoid(x @ W1.T + b1)
        return jnp.mean((h @ W2.T + b2 - y) ** 2)

    per_sample = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
    params, x, y = ((W1, b1), (W2, b2)), jnp.asarray(X)[:, None], jnp.asarray(Y)[:, None]
    G = jnp.asarray(model.per_sample_grads(X, Y, loss="mse"))
    outer = jax.jit(lambda g: jnp.einsum("bi,bj->bij", g, g))
    return [("JAX jit(vmap(grad))", lambda: jax.block_until_ready(per_sample(params, x, y))),
            ("JAX jit einsum outer", lambda: jax.block_until_ready(outer(G)))]


def _seed002_torch(model, X, Y):
    try:
        import torch
        from torch.func import functional_call, grad, vmap
    except ImportError:
        return []
    net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Sigmoid(), torch.nn.Linear(32, 1))
    params = {k: v.detach() for k, v in net.named_parameters()}
    x, y = torch.tensor(X)[:, None], torch.tensor(Y)[:, None]

    def loss(p, xb, yb):
        return torch.mean((functional_call(net, p, (xb,)) - yb) ** 2)

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    G = torch.tensor(model.per_sample_grads(X, Y, loss="mse"))
    H = torch.empty(G.shape[0], G.shape[1], G.shape[1])
    return [("PyTorch torch.func vmap(grad)", lambda: per_sample(params, x, y)),
            ("PyTorch einsum outer (out=H)", lambda: torch.einsum("bi,bj->bij", G, G, out=H))]


def training_rows(peers: bool) -> List[Tuple[str, float]]:
    """Seed 002's training: 200 epochs × 128 single-sample Adam steps, mse + ½λ²‖θ‖², float32.
    Timed as single runs (median of 3): each is tens of thousands of steps."""
    model, X, Y = _seed002_model()
    p0 = model.params.copy()

    def fastad_fit():
        model.params[:] = p0
        model.fit(X, Y, loss="mse", optimizer=fa.Adam(), epochs=200, batch_size=1,
                  shuffle=False, l2=0.01)

    cases = [("fastad model.fit (25,600 Adam steps)", fastad_fit)]
    if peers:
        cases += _training_torch(model, X, Y)
    fastad_fit()
    return [(name, median_of_single_runs(fn)) for name, fn in cases]


def _training_torch(model, X, Y):
    try:
        import torch
    except ImportError:
        return []
    net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Sigmoid(), torch.nn.Linear(32, 1))
    x, y = torch.tensor(X), torch.tensor(Y)

    def run():
        opt = torch.optim.Adam(net.parameters())
        for _ in range(200):
            for b in range(x.shape[0]):
                opt.zero_grad()
                pen = sum((p * p).sum() for p in net.parameters())
                loss = torch.mean((net(x[b:b + 1]) - y[b:b + 1]) ** 2) + 0.5 * 0.01**2 * pen
                loss.backward()
                opt.step()

    return [("PyTorch loop (same steps)", run)]


def fisher_rows(n: int) -> List[Tuple[str, float, float]]:
    """model.fisher at N samples of a 10 → 64 → 20 → 1 tanh network (P = 2,025), float32, beside
    the best GEMM of the run (fastad's and NumPy's). Rows: (name, seconds, GFLOP), counting the
    N·P·(P + 1) of one triangle of Σ g gᵀ (the other is mirrored)."""
    model = fa.Chain(fa.Dense(10, 64, "tanh"), fa.Dense(64, 20, "tanh"), fa.Dense(20, 1),
                     dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 10)).astype(np.float32)
    Y = rng.standard_normal((n, 1)).astype(np.float32)
    p = model.n_params
    F = np.empty((p, p), np.float32)
    rows = [_gemm_peak_row()] + _library_gemm_rows(peers=False)
    for kind in ("empirical", "ggn"):
        fn = lambda: model.fisher(X, Y, loss="mse", kind=kind, out=F)
        _note(f"  measuring fisher(kind={kind!r}), 4 calls of a few seconds each …")
        fn()
        rows.append((f"fastad fisher(kind={kind!r})",
                     median_of_single_runs(fn), 1.0 * n * p * (p + 1) * 1e-9))
    return rows


def laplace_seed002_rows(peers: bool) -> List[Tuple[str, float]]:
    """Seed 002 end to end after compile: a full-GGN Laplace fit, the prior precision and σ by
    the marginal likelihood, and the predictive on 200 points."""
    model, X, Y = _seed002_model()
    model.fit(X, Y, loss="mse", optimizer=fa.Adam(), epochs=200, batch_size=1, shuffle=False,
              l2=0.01)
    Xs = np.linspace(-2, 10, 200, dtype=np.float32)[:, None]
    out = (np.empty((200, 1)), np.empty((200, 1)))

    def end_to_end():
        la = fa.Laplace(model, "regression").fit(X, Y)
        la.optimize_prior_precision()
        return la.predict(Xs, out=out)

    la = fa.Laplace(model, "regression").fit(X, Y).optimize_prior_precision()
    cases = [
        ("fastad fit + optimize + predict(200)", end_to_end),
        ("fastad Laplace(...).fit(X, Y)", lambda: fa.Laplace(model, "regression").fit(X, Y)),
        ("fastad optimize_prior_precision()", lambda: la.optimize_prior_precision()),
        ("fastad predict(200 points, out=)", lambda: la.predict(Xs, out=out)),
    ]
    if peers:
        cases += _laplace_jax(model, X, Y, Xs)
    return _timed(cases)


def _laplace_jax(model, X, Y, Xs):
    """The same full-GGN Laplace in JAX, one jitted function: jacrev Jacobians, the GGN JᵀJ and
    its eigh, 20 of MacKay's fixed-point updates of λ and σ² on its eigenvalues (the
    evidence's optimum), and the predictive on the 200 points."""
    jax = jax_or_none()
    if jax is None:
        return []
    jnp = jax.numpy
    (W1, b1), (W2, b2) = [(jnp.asarray(l.weight), jnp.asarray(l.bias)) for l in model.layers]
    theta = jnp.concatenate([W1.ravel(), b1, W2.ravel(), b2])
    x, y, xs = jnp.asarray(X), jnp.asarray(Y)[:, 0], jnp.asarray(Xs)

    def f(t, x):
        W1, b1 = t[:32].reshape(32, 1), t[32:64]
        W2, b2 = t[64:96].reshape(1, 32), t[96:]
        return (jax.nn.sigmoid(x @ W1.T + b1) @ W2.T + b2)[:, 0]

    @jax.jit
    def laplace(t, x, y, xs):
        J = jax.jacrev(f)(t, x)  # (N, P)
        s, V = jnp.linalg.eigh(J.T @ J)
        r = y - f(t, x)
        n, p = x.shape[0], t.size
        lam, sigma2 = 1.0, 1.0
        for _ in range(20):  # MacKay's updates of λ and σ²
            gamma = jnp.sum(s / sigma2 / (s / sigma2 + lam))
            lam = gamma / (t @ t)
            sigma2 = (r @ r) / (n - gamma)
        Js = jax.jacrev(f)(t, xs) @ V
        var = jnp.sum(Js * Js / (s / sigma2 + lam), axis=1) + sigma2
        return f(t, xs), var

    run = lambda: jax.block_until_ready(laplace(theta, x, y, xs))  # noqa: E731
    return [("JAX jit: jacrev, eigh, MacKay, predict", run)]


def kron_rows(n: int) -> List[Tuple[str, float]]:
    """Kronecker factors of a 10 → 64 → 20 → 1 tanh network at N samples beside one
    value_and_grad of the same batch, float32, measured back to back."""
    model = fa.Chain(fa.Dense(10, 64, "tanh"), fa.Dense(64, 20, "tanh"), fa.Dense(20, 1),
                     dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 10)).astype(np.float32)
    Y = rng.standard_normal((n, 1)).astype(np.float32)
    g = np.empty(model.n_params, np.float32)
    out = model.fisher(X[:2], Y[:2], loss="mse", kind="ggn", structure="kron")
    cases = [
        ("fastad value_and_grad(X, Y, out=g)",
         lambda: model.value_and_grad(X, Y, loss="mse", out=g)),
        ("fastad fisher(ggn, structure=kron)",
         lambda: model.fisher(X, Y, loss="mse", kind="ggn", structure="kron", out=out)),
        ("fastad fisher(empirical, kron)",
         lambda: model.fisher(X, Y, loss="mse", kind="empirical", structure="kron", out=out)),
    ]
    return _timed(cases)


def last_layer_rows(n: int = 60_000, m: int = 10_000) -> List[Tuple[str, float]]:
    """Last-layer Laplace (Kronecker factors) of a 784 → 256 → 256 → 10 tanh classifier on
    random data of MNIST's shape, float32: fit on N = 60,000 and the probit predictive on
    10,000 points, beside the network's forward pass on the same rows."""
    model = fa.Chain(fa.Dense(784, 256, "tanh"), fa.Dense(256, 256, "tanh"), fa.Dense(256, 10),
                     dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 784)).astype(np.float32)
    y = rng.integers(0, 10, n)
    Xs = X[:m]
    out_n, out_m, probs = np.empty((n, 10), np.float32), np.empty((m, 10), np.float32), np.empty((m, 10))
    la = fa.Laplace(model, "classification", subset="last_layer", hessian="kron").fit(X[:100], y[:100])
    fit = lambda: la.fit(X, y)  # noqa: E731
    fit()
    cases = [
        ("fastad forward model(X, out=) N=60k", lambda: model(X, out=out_n)),
        ("fastad Laplace fit, N = 60,000", fit),
        ("fastad forward model(Xs, out=) M=10k", lambda: model(Xs, out=out_m)),
        ("fastad predict(Xs, out=), M = 10,000", lambda: la.predict(Xs, out=probs)),
    ]
    _note("  measuring the last-layer Laplace …")
    times = {name: median_of_single_runs(fn, repeat=5) for name, fn in cases}
    _note("")
    return [(name, times[name]) for name, _ in cases]


def _gemm_peak_row(m: int = 1024) -> Tuple[str, float, float]:
    """A square product through fastad's GEMM; its time is the best of the runs (the peak is
    what the machine can do, so the least disturbed run measures it)."""
    A, C = _square_operands(m)
    square = fa.compile(lambda a, b: a @ b, A, A)
    return (f"fastad GEMM {m}×{m}×{m} (best)", _best(lambda: square(A, A, out=C)),
            2.0 * m**3 * 1e-9)


def _square_operands(m: int) -> Tuple[np.ndarray, np.ndarray]:
    """A (m, m) float32 operand and an array for its square: every GEMM row multiplies these."""
    A = np.random.default_rng(1).standard_normal((m, m)).astype(np.float32)
    return A, np.empty((m, m), np.float32)


def _best(fn: Callable[[], object]) -> float:
    return min(median_seconds(fn, repeat=3) for _ in range(3))


def _library_gemm_rows(peers: bool, m: int = 1024) -> List[Tuple[str, float, float]]:
    """The same square product by NumPy's BLAS (on the threads its environment gives it:
    OPENBLAS_NUM_THREADS and the like) and, with peers, by JAX's jit, best of the runs: the
    machine's best product, which the GEMM-bound rows are measured against."""
    A, C = _square_operands(m)
    rows = [(f"NumPy GEMM {m}×{m}×{m} (best)", _best(lambda: np.matmul(A, A, out=C)),
             2.0 * m**3 * 1e-9)]
    if peers:
        jax = jax_or_none()
        if jax is None:
            return rows
        product = jax.jit(lambda a, b: a @ b)
        a = jax.numpy.asarray(A)
        rows.append((f"JAX GEMM {m}×{m}×{m} (best)",
                     _best(lambda: jax.block_until_ready(product(a, a))), 2.0 * m**3 * 1e-9))
    return rows


def _note(text: str) -> None:
    """A progress line on stderr, erased by the next one (the table goes to stdout)."""
    print(f"\r{text:80s}", end="\r", file=sys.stderr, flush=True)


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:9.2f} µs"
    return f"{seconds * 1e3:9.2f} ms"


def _table(title: str, rows: List[Tuple[str, float]], base: str) -> None:
    print(title)
    print(f"  {'':36s} {'median':>12s}   {base:>16s}")
    t0 = rows[0][1]
    for name, t in rows:
        print(f"  {name:36s} {_fmt(t)}   {t / t0:15.2f}×")
    print()


def _cpu_name() -> str:
    """The CPU's name, with its family and model numbers where Linux gives them: a virtual
    machine may name only the vendor ("AMD EPYC"), and the numbers tell the generation (family
    23 model 1 is a first Zen, whose 256-bit vector instructions run as two 128-bit halves)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first CPU's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "this CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def run(peers: bool = True, sizes: Optional[List[int]] = None,
        fisher_n: Optional[int] = None) -> None:
    """Prints the seed workloads' table: median time per call and ratios, peers in the same run."""
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    print(f"fastad {fa.__version__} — {fa.instruction_set()} kernels on {_cpu_name()}, "
          f"{fa.get_num_threads()} threads (NumPy's BLAS: {blas or 'its default'} threads); "
          f"medians\n")
    for n in sizes or [100, 10_000]:
        _table(f"Seed 003, EAM f(x) = ρ² + ρ³ + ρ⁴/4, x ∈ R^{n}, float64", eam_rows(n, peers),
               "÷ NumPy value")
    rows = seed000_rows(peers)
    _table("Seed 000, sum of squares of a 1→1000→20→1 network on N = 10,000, float64", rows,
           "÷ NumPy forward")
    t = dict(rows)
    print(f"  fastad gradient ÷ fastad forward: "
          f"{t['fastad value_and_grad(X, out=g)'] / t['fastad forward model(X, out=Y)']:.2f}×\n")
    _flops_table("Wide layers: 512 → 512 → 512, tanh, N = 4096, float32", wide_rows(peers))
    _table("Wide classifier: 784 → 512 → 512 → 10, tanh, cross-entropy, N = 4096, float32",
           classifier_rows(peers), "÷ first row")
    _table("Seed 002 (Laplace): Dense(1→32, sigmoid) → Dense(32→1), N = 128, P = 97, float32",
           seed002_rows(peers), "÷ first row")
    _table("Seed 002 training: 200 epochs × 128 single-sample Adam steps, float32",
           training_rows(peers), "÷ first row")
    _table("Laplace, seed 002 end to end (full GGN; prior and σ fitted), float32 model",
           laplace_seed002_rows(peers), "÷ first row")
    n = fisher_n or 100_000
    rows = kron_rows(n)
    _table(f"Kronecker factors: 10 → 64 → 20 → 1 tanh, N = {n:,}, float32", rows,
           "÷ value_and_grad")
    rows = last_layer_rows(n=60_000 if fisher_n is None else 6_000,
                           m=10_000 if fisher_n is None else 1_000)
    title = "Last-layer Laplace (kron): 784 → 256 → 256 → 10 tanh classifier, float32"
    _table(f"{title}: fit", rows[:2], "÷ forward")
    _table(f"{title}: predictive", rows[2:], "÷ forward")
    _flops_table(f"Fisher Σ_b g_b g_bᵀ (one triangle): 10 → 64 → 20 → 1 tanh, N = {n:,}, "
                 f"P = 2,025, float32",
                 fisher_rows(n))


def _flops_table(title: str, rows: List[Tuple[str, float, float]]) -> None:
    """GFLOP/s of each row and its share of the best GEMM row's (fastad's or a library's)."""
    print(title)
    print(f"  {'':36s} {'median':>12s}   {'GFLOP/s':>9s}   {'÷ best GEMM':>11s}")
    _note("")
    peak = max(gflop / sec for name, sec, gflop in rows if "GEMM" in name)
    above = False
    for name, sec, gflop in rows:
        share = gflop / sec / peak
        # Above the peak means the peak's runs were disturbed more than this row's: say so
        # rather than print an impossible share.
        mark = "*" if share > 1.0 else " "
        above |= share > 1.0
        print(f"  {name:36s} {_fmt(sec)}   {gflop / sec:9.1f}   {min(share, 1.0):10.0%}{mark}")
    if above:
        print("  * measured above the best GEMM: the machine was busier while the GEMM ran")
    print()
