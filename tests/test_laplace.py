"""fa.Laplace and the Kronecker factors of Chain.fisher, against references computed in NumPy:
Bayesian linear regression (where the Laplace posterior is exact), the full GGN and empirical
Fisher built from the model's Jacobian, hand-written forward and backward passes for the
Kronecker factors, central differences for the marginal likelihood's gradient, and Gauss-Hermite
quadrature for the classification predictive."""
import math
import tracemalloc

import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel, errors_in_threads


def tanh_net(K, dtype=np.float64, seed=0):
    return fa.Chain(fa.Dense(3, 6, "tanh"), fa.Dense(6, 4, "tanh"), fa.Dense(4, K),
                    dtype=dtype, seed=seed)


def data(kind, K, n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    if kind == "regression":
        return X, rng.normal(size=(n, K))
    if K == 1:
        return X, rng.integers(0, 2, (n, 1)).astype(float)
    return X, rng.integers(0, K, n)


def log_likelihood_np(kind, F, Y, sigma):
    """log p(Y | F) and, per sample, the gradient and Hessian of −log p with respect to f_b."""
    n, K = F.shape
    if kind == "regression":
        r = F - Y
        ll = -0.5 * n * K * math.log(2 * math.pi * sigma**2) - 0.5 * (r * r).sum() / sigma**2
        return ll, r / sigma**2, np.broadcast_to(np.eye(K) / sigma**2, (n, K, K))
    if K == 1:
        s = 1 / (1 + np.exp(-F))
        ll = float((Y * np.log(s) + (1 - Y) * np.log(1 - s)).sum())
        return ll, s - Y, (s * (1 - s))[:, :, None]
    p = np.exp(F - F.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(K)[Y]
    ll = float(np.log(p[np.arange(n), Y]).sum())
    return ll, p - onehot, np.einsum("bk,kl->bkl", p, np.eye(K)) - np.einsum("bk,bl->bkl", p, p)


def reference(model, kind, curvature, X, Y, lam, sigma, subset=slice(None)):
    """The posterior precision, marginal likelihood and covariance, from the model's Jacobian."""
    J = model.jacobian(X)[:, :, subset]
    F = model(X)
    ll, g, Lam = log_likelihood_np(kind, F, Y, sigma)
    if curvature == "ggn":
        H = np.einsum("bkp,bkl,blq->pq", J, Lam, J)
    else:
        G = np.einsum("bkp,bk->bp", J, g)
        H = G.T @ G
    theta = model.params[subset]
    Hp = H + np.diag(np.broadcast_to(lam, theta.shape))
    lml = (ll - 0.5 * np.linalg.slogdet(Hp)[1] + 0.5 * np.log(np.broadcast_to(lam, theta.shape)).sum()
           - 0.5 * (lam * theta * theta).sum())
    return Hp, lml, np.linalg.inv(Hp)


# Bayesian linear regression: the Laplace posterior is exact ---------------------------------------

def linear_problem(N=50, d=3, sigma=0.5, lam=2.0, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, d))
    y = X @ rng.normal(size=d) + 0.3 + sigma * rng.normal(size=N)
    Phi = np.hstack([X, np.ones((N, 1))])  # parameters: the weight row, then the bias
    Hp = Phi.T @ Phi / sigma**2 + lam * np.eye(d + 1)
    theta = np.linalg.solve(Hp, Phi.T @ y / sigma**2)  # the exact MAP (normal equations)
    model = fa.Chain(fa.Dense(d, 1), dtype=np.float64)
    model.params = theta
    return X, y, Phi, Hp, model


@pytest.mark.parametrize("hessian", ["full", "kron"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_linear_regression_is_exact(hessian, subset):
    sigma, lam = 0.5, 2.0
    X, y, Phi, Hp, model = linear_problem(sigma=sigma, lam=lam)
    la = fa.Laplace(model, "regression", subset=subset, hessian=hessian, prior_precision=lam,
                    sigma_noise=sigma).fit(X, y)
    if hessian == "full":
        assert_close_rel(la.posterior_precision, Hp, 1e-12)
    N = X.shape[0]
    C = sigma**2 * np.eye(N) + Phi @ Phi.T / lam  # y ~ N(0, σ²I + ΦΦᵀ/λ)
    want = -0.5 * (N * math.log(2 * math.pi) + np.linalg.slogdet(C)[1] + y @ np.linalg.solve(C, y))
    assert la.log_marginal_likelihood() == pytest.approx(want, rel=1e-12)
    Xs = np.random.default_rng(1).normal(size=(7, 3))
    Ps = np.hstack([Xs, np.ones((7, 1))])
    mean, var = la.predict(Xs)
    S = np.linalg.inv(Hp)
    assert_close_rel(mean[:, 0], Ps @ model.params, 1e-12)
    assert_close_rel(var[:, 0], np.einsum("bi,ij,bj->b", Ps, S, Ps) + sigma**2, 1e-12)
    assert_close_rel(la.functional_variance(Xs)[:, 0, 0], np.einsum("bi,ij,bj->b", Ps, S, Ps),
                     1e-12)
    # At other hyper-parameters, without refitting: the same formula.
    lam2, sigma2 = 0.3, 0.8
    C2 = sigma2**2 * np.eye(N) + Phi @ Phi.T / lam2
    theta = model.params
    # log p(D) at θ* (no longer the MAP): the Laplace formula, computed here by hand.
    H2 = Phi.T @ Phi / sigma2**2 + lam2 * np.eye(4)
    r = y - Phi @ theta
    want2 = (-0.5 * N * math.log(2 * math.pi * sigma2**2) - 0.5 * r @ r / sigma2**2
             - 0.5 * np.linalg.slogdet(H2)[1] + 2 * math.log(lam2) - 0.5 * lam2 * theta @ theta)
    assert la.log_marginal_likelihood(lam2, sigma2) == pytest.approx(want2, rel=1e-12)
    del C2


def test_optimized_prior_and_noise_maximise_the_evidence():
    """At the exact MAP of each (λ, σ), the evidence of Bayesian linear regression is a closed
    form; the optimum found from the Laplace object (at a fixed θ*) must be its stationary point
    with respect to the Laplace formula, which we check by perturbing."""
    X, y, Phi, Hp, model = linear_problem()
    la = fa.Laplace(model, "regression", prior_precision=1.0).fit(X, y)
    la.optimize_prior_precision()
    lam, sigma = la.prior_precision, la.sigma_noise
    best = la.log_marginal_likelihood()
    for dl, ds in [(1.01, 1), (0.99, 1), (1, 1.01), (1, 0.99)]:
        assert la.log_marginal_likelihood(lam * dl, sigma * ds) < best
    la.optimize_prior_precision(sigma_noise=False)  # σ stays where it is
    assert la.sigma_noise == sigma


def test_prior_from_l2_is_the_training_objective():
    """fit(l2=λ) minimises w·Σ nll + ½λ²‖θ‖²: its minimiser (normal equations) must be the MAP
    of the prior that prior_precision="l2" gives."""
    X, y, Phi, _, model = linear_problem()
    N, sigma, l2 = X.shape[0], 0.7, 0.3
    for loss, batch, scale in [("sse", N, 1.0), ("sse", 10, N / 10), ("mse", 5, N)]:
        model.fit(X, y, loss=loss, epochs=0, batch_size=batch, l2=l2)  # records the objective
        la = fa.Laplace(model, "regression", prior_precision="l2", sigma_noise=sigma)
        tau = la.prior_precision
        # The training objective's stationary point, written for each loss:
        # sse: (B/N)·Σr² + ½λ²‖θ‖²; mse: Σr²/N + ½λ²‖θ‖².
        w = {"sse": batch / N, "mse": 1.0 / N}[loss]
        train = np.linalg.solve(w * Phi.T @ Phi + 0.5 * l2**2 * np.eye(4), w * Phi.T @ y)
        post = np.linalg.solve(Phi.T @ Phi / sigma**2 + tau * np.eye(4), Phi.T @ y / sigma**2)
        assert_close_rel(post, train, 1e-10, f"{loss}, batch {batch}")
        del scale
    model.fit(X, y, loss="sse", epochs=0, l2=0.0)
    with pytest.raises(ValueError, match="without l2"):
        fa.Laplace(model, "regression", prior_precision="l2")
    model.fit(X, y, loss="sse", epochs=0, l2=0.1)
    with pytest.raises(ValueError, match="not a classification likelihood"):
        fa.Laplace(model, "classification", prior_precision="l2")


# Small networks against NumPy references ----------------------------------------------------------

CASES = [("regression", 2), ("classification", 3), ("classification", 1)]


@pytest.mark.parametrize("kind,K", CASES)
@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_full_laplace_matches_the_jacobian_reference(kind, K, curvature, threads):
    model = tanh_net(K)
    X, Y = data(kind, K)
    lam, sigma = 0.7, 0.4 if kind == "regression" else 1.0
    la = fa.Laplace(model, kind, curvature=curvature, prior_precision=lam,
                    sigma_noise=sigma).fit(X, Y)
    Hp, lml, S = reference(model, kind, curvature, X, Y, lam, sigma)
    assert_close_rel(la.posterior_precision, Hp, 1e-10)
    assert la.log_marginal_likelihood() == pytest.approx(lml, rel=1e-10)
    assert_close_rel(la.posterior_variance, S, 1e-9)
    Xs = np.random.default_rng(5).normal(size=(9, 3))
    Js = model.jacobian(Xs)
    assert_close_rel(la.functional_variance(Xs), np.einsum("bkp,pq,blq->bkl", Js, S, Js), 1e-9)
    # Per-layer priors take the Cholesky path: the same reference with λ per parameter.
    lams = np.array([0.5, 2.0, 1.5])
    la.prior_precision = lams
    per_param = np.repeat(lams, [l.n_params for l in model.layers])
    Hp2, lml2, _ = reference(model, kind, curvature, X, Y, per_param, sigma)
    assert la.log_marginal_likelihood() == pytest.approx(lml2, rel=1e-10)


@pytest.mark.parametrize("kind,K", CASES)
def test_diag_and_last_layer_are_the_full_posterior_s_parts(kind, K):
    model = tanh_net(K)
    X, Y = data(kind, K)
    full = fa.Laplace(model, kind, prior_precision=0.9).fit(X, Y)
    Hp = full.posterior_precision
    diag = fa.Laplace(model, kind, hessian="diag", prior_precision=0.9).fit(X, Y)
    assert_close_rel(diag.posterior_precision, np.diag(Hp), 1e-12)
    assert_close_rel(diag.posterior_variance, 1 / np.diag(Hp), 1e-12)
    last = fa.Laplace(model, kind, subset="last_layer", prior_precision=0.9).fit(X, Y)
    off = model.layers[-1]._offset
    assert last.n_params == model.n_params - off
    assert_close_rel(last.posterior_precision, Hp[off:, off:], 1e-12)
    # Its predictive: the Jacobian's last-layer columns with the block's inverse.
    Xs = np.random.default_rng(5).normal(size=(6, 3))
    J = model.jacobian(Xs)[:, :, off:]
    S = np.linalg.inv(Hp[off:, off:])
    assert_close_rel(last.functional_variance(Xs), np.einsum("bkp,pq,blq->bkl", J, S, J), 1e-10)
    # Samples cover the last layer only.
    theta = last.sample(3, seed=1)
    assert np.array_equal(theta[:, :off], np.broadcast_to(model.params[:off], (3, off)))


def forward_backward_np(model, X, seeds):
    """Hand-written passes of a Chain of tanh layers and a linear last layer: per layer, the
    inputs with the bias's 1 (N, in + 1) and, for each output cotangent in `seeds` (N, K), the
    derivative with respect to the layer's product."""
    a, acts = X, []
    for i, layer in enumerate(model.layers):
        acts.append(np.hstack([a, np.ones((a.shape[0], 1))]))
        z = a @ layer.weight.T + layer.bias
        a = np.tanh(z) if i < len(model.layers) - 1 else z
    deltas = []
    for C in seeds:
        d, per_layer = C, []
        for i in range(len(model.layers) - 1, -1, -1):
            per_layer.insert(0, d)
            if i:
                h = acts[i][:, :-1]  # tanh of the layer below
                d = (d @ model.layers[i].weight) * (1 - h * h)
        deltas.append(per_layer)
    return acts, deltas


@pytest.mark.parametrize("loss,K", [("sse", 2), ("mse", 2), ("cross_entropy", 3)])
def test_kron_factors_match_their_definitions(loss, K, threads):
    model = tanh_net(K)
    # Rows enough for several tiles of the tiled sweep, the last ragged; GGN in several chunks.
    X, Y = data("classification" if loss == "cross_entropy" else "regression", K, n=2_500)
    model._KRON_CHUNK_ELEMENTS = 9_000
    F = model(X)
    # Empirical: δ from each sample's own loss term; GGN: from the rows of Λ_b's factor.
    if loss == "cross_entropy":
        p = np.exp(F - F.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        emp = [p - np.eye(K)[Y]]
        ggn = []
        for k in range(K):  # row k of M_b = √p_k (e_k − p)
            ggn.append(np.sqrt(p[:, k:k + 1]) * (np.eye(K)[k] - p))
    else:
        c = 2.0 if loss == "sse" else 2.0 / K
        emp = [c * (F - Y)]
        ggn = [math.sqrt(c) * np.tile(np.eye(K)[k], (X.shape[0], 1)) for k in range(K)]
    for kind, seeds in (("empirical", emp), ("ggn", ggn)):
        acts, deltas = forward_backward_np(model, X, seeds)
        A, G = model.fisher(X, Y, loss=loss, kind=kind, structure="kron")
        for l in range(3):
            assert_close_rel(A[l], acts[l].T @ acts[l], 1e-12, f"A[{l}] {kind}")
            want = sum(d[l].T @ d[l] for d in deltas)
            assert_close_rel(G[l], want, 1e-12, f"G[{l}] {kind}")
        # accumulate=True adds: two halves give the whole.
        out = ([np.zeros_like(a) for a in A], [np.zeros_like(g) for g in G])
        for rows in (slice(0, 1_000), slice(1_000, None)):
            model.fisher(X[rows], Y[rows], loss=loss, kind=kind, structure="kron", out=out,
                         accumulate=True)
        for got, want in zip(out[0] + out[1], A + G):
            assert_close_rel(got, want, 1e-12)


def test_kron_of_one_sample_with_one_output_is_the_full_block():
    model = tanh_net(1)
    X, Y = data("regression", 1, n=1)
    for kind in ("ggn", "empirical"):
        F = model.fisher(X, Y, kind=kind)
        A, G = model.fisher(X, Y, kind=kind, structure="kron")
        for layer, Al, Gl in zip(model.layers, A, G):
            o, i = layer.out_features, layer.in_features
            idx = np.array([layer._offset + r * i + c if c < i else layer._offset + o * i + r
                            for r in range(o) for c in range(i + 1)])
            assert_close_rel(np.kron(Gl, Al), F[np.ix_(idx, idx)], 1e-12)


def test_fisher_accumulates_and_structure_is_checked():
    model = tanh_net(2)
    X, Y = data("regression", 2)
    F = model.fisher(X, Y)
    out = np.zeros_like(F)
    d = np.zeros(model.n_params)
    for rows in (slice(0, 13), slice(13, None)):
        model.fisher(X[rows], Y[rows], out=out, accumulate=True)
        model.fisher_diag(X[rows], Y[rows], out=d, accumulate=True)
    assert_close_rel(out, F, 1e-13)
    assert_close_rel(d, np.diag(F), 1e-13)
    assert_close_rel(model.fisher(X, Y, structure="diag"), np.diag(F), 1e-13)
    with pytest.raises(ValueError, match="accumulate=True adds to out="):
        model.fisher(X, Y, accumulate=True)
    with pytest.raises(ValueError, match='structure must be "full", "diag" or "kron"'):
        model.fisher(X, Y, structure="block")
    with pytest.raises(TypeError, match="pair"):
        model.fisher(X, Y, structure="kron", out=np.zeros(3))
    A, G = model.fisher(X, Y, structure="kron")
    bad = ([np.zeros_like(a) for a in A], [np.zeros((2, 3)) for _ in G])
    with pytest.raises(ValueError, match=r"has shape \(2, 3\); expected \(6, 6\)"):
        model.fisher(X, Y, structure="kron", out=bad)
    assert not bad[0][0].any()  # nothing written


@pytest.mark.parametrize("hessian", ["full", "diag", "kron"])
@pytest.mark.parametrize("kind,K", [("regression", 2), ("classification", 3)])
@pytest.mark.parametrize("prior", ["scalar", "layer"])
def test_marginal_likelihood_gradient_matches_central_differences(hessian, kind, K, prior):
    model = tanh_net(K)
    X, Y = data(kind, K)
    lam = 0.8 if prior == "scalar" else np.array([0.5, 1.7, 0.9])
    la = fa.Laplace(model, kind, hessian=hessian, prior_precision=lam,
                    sigma_noise=0.6).fit(X, Y)
    groups, n_groups, lam_g = la._groups(la._hyper)
    u = np.append(np.log(lam_g), math.log(0.6))
    evidence = la._evidence(la._fitted, groups, n_groups)
    f, g = la._objective(u, evidence)
    for i in range(u.size):
        e = np.zeros(u.size)
        e[i] = 1e-5
        fd = (la._objective(u + e, evidence)[0] - la._objective(u - e, evidence)[0]) / 2e-5
        assert g[i] == pytest.approx(fd, rel=1e-6, abs=1e-7)
    # The objective is the public marginal likelihood's negative.
    assert -f == pytest.approx(la.log_marginal_likelihood(), rel=1e-13)


def test_kron_predictive_and_samples_match_its_dense_blocks():
    """Kron's functional variance, marginal variances and samples against the block-diagonal
    precision formed densely from its own factors."""
    model = tanh_net(2)
    X, Y = data("regression", 2)
    la = fa.Laplace(model, "regression", hessian="kron", prior_precision=[0.5, 1.0, 2.0],
                    sigma_noise=0.5).fit(X, Y)
    P = model.n_params
    Hp = np.zeros((P, P))
    for layer, (G, A, lam) in zip(model.layers, la.posterior_precision):
        o, i = layer.out_features, layer.in_features
        idx = np.array([layer._offset + r * i + c if c < i else layer._offset + o * i + r
                        for r in range(o) for c in range(i + 1)])
        Hp[np.ix_(idx, idx)] = np.kron(G, A) + lam * np.eye(idx.size)
    S = np.linalg.inv(Hp)
    assert_close_rel(la.posterior_variance, np.diag(S), 1e-10)
    Xs = np.random.default_rng(3).normal(size=(8, 3))
    J = model.jacobian(Xs)
    assert_close_rel(la.functional_variance(Xs), np.einsum("bkp,pq,blq->bkl", J, S, J), 1e-10)
    # The last layer alone: the same factors, and its block's predictive (the closed form for
    # a linear last layer: no reverse passes).
    last = fa.Laplace(model, "regression", subset="last_layer", hessian="kron",
                      prior_precision=2.0, sigma_noise=0.5).fit(X, Y)
    G, A, lam = last.posterior_precision[0]
    assert_close_rel(G, la.posterior_precision[2][0], 1e-12)
    assert_close_rel(A, la.posterior_precision[2][1], 1e-12)
    off = model.layers[-1]._offset
    block = Hp[off:, off:]
    J = J[:, :, off:]
    fvar = np.einsum("bkp,pq,blq->bkl", J, np.linalg.inv(block), J)
    assert_close_rel(last.functional_variance(Xs), fvar, 1e-10)
    mean, var = last.predict(Xs)
    assert_close_rel(mean, model(Xs), 1e-12)
    assert_close_rel(var, np.diagonal(fvar, axis1=1, axis2=2) + 0.5 ** 2, 1e-10)
    n = 40000
    theta = la.sample(n, seed=3) - model.params
    # δᵀ Σ⁻¹ δ is χ² with P degrees of freedom: mean P, standard deviation √(2P/n) of the mean.
    chi2 = np.einsum("bi,ij,bj->b", theta, Hp, theta).mean()
    assert abs(chi2 - P) < 5 * math.sqrt(2 * P / n)
    # Variances along the axes and along random directions, each within 5 standard deviations.
    U = np.vstack([np.eye(P), np.random.default_rng(0).normal(size=(20, P))])
    want = np.einsum("ui,ij,uj->u", U, S, U)
    got = ((theta @ U.T) ** 2).mean(0)
    assert np.abs(got / want - 1).max() < 5 * math.sqrt(2 / n)


def test_last_layer_kron_predictive_without_a_bias_matches_its_dense_block():
    model = fa.Chain(fa.Dense(3, 6, "tanh"), fa.Dense(6, 2, use_bias=False), dtype=np.float64,
                     seed=1)
    X, Y = data("regression", 2)
    la = fa.Laplace(model, "regression", subset="last_layer", hessian="kron",
                    prior_precision=0.7, sigma_noise=0.4).fit(X, Y)
    (G, A, lam), = la.posterior_precision
    assert A.shape == (6, 6)
    Xs = np.random.default_rng(5).normal(size=(9, 3))
    J = model.jacobian(Xs)[:, :, model.layers[-1]._offset:]
    S = np.linalg.inv(np.kron(G, A) + lam * np.eye(12))
    fvar = np.einsum("bkp,pq,blq->bkl", J, S, J)
    assert_close_rel(la.functional_variance(Xs), fvar, 1e-10)
    mean, var = la.predict(Xs)
    assert_close_rel(mean, model(Xs), 1e-12)
    assert_close_rel(var, np.diagonal(fvar, axis1=1, axis2=2) + 0.4 ** 2, 1e-10)
    # A new prior reaches the predictive's reused buffers.
    la.prior_precision = 3.0
    S = np.linalg.inv(np.kron(G, A) + 3.0 * np.eye(12))
    assert_close_rel(la.functional_variance(Xs), np.einsum("bkp,pq,blq->bkl", J, S, J), 1e-10)


def test_classification_probit_and_mc_against_quadrature():
    model = tanh_net(1, seed=2)
    X, Y = data("classification", 1, n=60)
    la = fa.Laplace(model, "classification", prior_precision=0.2).fit(X, Y)
    Xs = np.random.default_rng(4).normal(size=(5, 3)) * 2
    f = model(Xs)[:, 0]
    v = la.functional_variance(Xs)[:, 0, 0]
    x, w = np.polynomial.hermite_e.hermegauss(80)  # ∫ σ(f + √v x) N(x) dx
    exact = (w / np.sqrt(2 * np.pi) * (1 / (1 + np.exp(-(f[:, None] + np.sqrt(v)[:, None] * x))))).sum(1)
    mc = la.predict(Xs, link="mc", n_samples=200_000, seed=0)[:, 0]
    assert np.abs(mc - exact).max() < 4e-3
    probit = la.predict(Xs)[:, 0]
    assert np.abs(probit - exact).max() < 0.02
    # Several classes: the probit approximation against many samples.
    model3 = tanh_net(3, seed=2)
    X3, Y3 = data("classification", 3, n=60)
    la3 = fa.Laplace(model3, "classification", prior_precision=0.3).fit(X3, Y3)
    p_mc = la3.predict(Xs, link="mc", n_samples=100_000, seed=1)
    p_probit = la3.predict(Xs)
    assert_close_rel(p_mc.sum(1), np.ones(5), 1e-12)
    assert np.abs(p_probit - p_mc).max() < 0.05


def test_errors_name_the_problem():
    model = tanh_net(2)
    X, Y = data("regression", 2)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        fa.Laplace(model, "poisson")
    with pytest.raises(TypeError, match="takes a fa.Chain"):
        fa.Laplace(object())
    with pytest.raises(ValueError, match=r"one value per layer \(3,\) or one per parameter"):
        fa.Laplace(model, prior_precision=[1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        fa.Laplace(model, prior_precision=0.0)
    with pytest.raises(ValueError, match="not one per parameter"):
        fa.Laplace(model, hessian="kron", prior_precision=np.ones(model.n_params))
    with pytest.raises(ValueError, match=r"prior_mean must be .* \(62,\)"):
        fa.Laplace(model, prior_mean=np.zeros(3))
    la = fa.Laplace(model)
    with pytest.raises(RuntimeError, match="fit"):
        la.predict(X)
    with pytest.raises(ValueError, match=r"targets Y must have 40 rows"):
        la.fit(X, Y[:3])
    la.fit(X, Y)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3\)"):
        la.predict(np.zeros((4, 2)))
    with pytest.raises(TypeError, match="has dtype float32; expected float64"):
        la.predict(X, out=(np.zeros((40, 2), np.float32), np.zeros((40, 2))))
    with pytest.raises(ValueError, match="link applies to classification"):
        la.predict(X, link="mc")
    big = fa.Chain(fa.Dense(20000, 100), dtype=np.float64)
    with pytest.raises(MemoryError, match="hessian='kron' or 'diag'"):
        fa.Laplace(big).fit(np.zeros((2, 20000)), np.zeros((2, 100)))
    with pytest.raises(MemoryError):
        la.sample(10**13)


def test_kron_factors_too_large_for_memory_raise_memory_error():
    """A layer with 400,000 inputs has an A factor of 1.3 TB: MemoryError (from NumPy's array
    or the Rust sums, whichever is first), in a subprocess, and the model still works."""
    from test_hardening import expect_lines
    expect_lines("""
        import numpy as np, fastad as fa
        model = fa.Chain(fa.Dense(400_000, 1), dtype=np.float64, seed=0)
        X, Y = np.zeros((2, 400_000)), np.zeros((2, 1))
        for kind in ("empirical", "ggn"):
            try:
                model.fisher(X, Y, kind=kind, structure="kron")
                print("no error")
            except MemoryError:
                print("MemoryError")
        try:
            fa.Laplace(model, hessian="kron").fit(X, Y)
            print("no error")
        except MemoryError:
            print("MemoryError")
        print(model(X).shape)
    """, ["MemoryError", "MemoryError", "MemoryError", "(2, 1)"])


def test_predict_with_out_allocates_nothing_after_the_first_call():
    model = tanh_net(2)
    X, Y = data("regression", 2)
    M = 4000
    Xs = np.random.default_rng(2).normal(size=(M, 3))
    cases = [("regression", 2, hessian) for hessian in ("full", "diag", "kron")]
    cases += [("classification", 3, "kron"), ("classification", 1, "full")]
    cases += [("regression", 2, "last_layer"), ("classification", 3, "last_layer")]
    for kind, K, hessian in cases:
        model = tanh_net(K)
        X, Y = data(kind, K)
        if hessian == "last_layer":
            la = fa.Laplace(model, kind, subset="last_layer", hessian="kron").fit(X, Y)
        else:
            la = fa.Laplace(model, kind, hessian=hessian).fit(X, Y)
        out = np.empty((M, K))
        if kind == "regression":
            out = (out, np.empty((M, K)))
        la.predict(Xs, out=out)
        before = fa.allocation_count()
        tracemalloc.start()
        la.predict(Xs, out=out)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert fa.allocation_count() == before, hessian
        # Python's own bookkeeping only (views, lists): far less than one (M, K) array (32 kB
        # and more), let alone a tile's buffers.
        assert peak < 8000, (kind, hessian, peak)


@pytest.mark.parametrize("hessian,subset,curvature", [
    ("kron", "all", "ggn"), ("kron", "all", "ef"), ("diag", "all", "ggn"),
    ("kron", "last_layer", "ggn"), ("full", "last_layer", "ggn")])
def test_fit_memory_does_not_grow_with_n(hessian, subset, curvature):
    """fit streams the data: peak memory (NumPy's, by tracemalloc, and the native extension's)
    is the same for N = 20,000 and N = 200,000."""
    model = fa.Chain(fa.Dense(10, 64, "tanh"), fa.Dense(64, 20, "tanh"), fa.Dense(20, 3),
                     dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200_000, 10)).astype(np.float32)
    y = rng.integers(0, 3, 200_000)
    la = fa.Laplace(model, "classification", hessian=hessian, subset=subset,
                    curvature=curvature)
    la.fit(X[:20_000], y[:20_000])  # compiles, and makes the buffers a fit of this size needs
    peaks = []
    for n in (20_000, 200_000):
        fa._fastad._allocated_bytes(reset_peak=True)
        live = fa._fastad._allocated_bytes()[0]
        tracemalloc.start()
        la.fit(X[:n], y[:n])
        numpy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks.append((numpy_peak, fa._fastad._allocated_bytes()[1] - live))
    (np_small, rust_small), (np_large, rust_large) = peaks
    # Ten times the data (8 MB more of X alone, and 8 MB more of label bytes) and the same peak,
    # up to a few kB of bookkeeping.
    assert np_large <= np_small + 16_384, peaks
    assert rust_large <= rust_small + 16_384, peaks


def test_methods_from_several_threads_agree_with_one():
    """fit, predict, the marginal likelihood and sampling from 8 threads at once give what one
    thread gives (each thread has its own buffers; a fit replaces the state whole)."""
    model = tanh_net(3)
    X, Y = data("classification", 3, n=200)
    la = fa.Laplace(model, "classification", hessian="kron").fit(X, Y)
    Xs = np.random.default_rng(1).normal(size=(300, 3))
    want = (la.predict(Xs), la.log_marginal_likelihood(), la.sample(5, seed=2),
            la.functional_variance(Xs))

    def work(i):
        for _ in range(5):
            if i % 4 == 0:
                la.fit(X, Y)
            got = (la.predict(Xs), la.log_marginal_likelihood(), la.sample(5, seed=2),
                   la.functional_variance(Xs))
            for g, w in zip(got, want):
                assert np.allclose(g, w, rtol=1e-12, atol=0), i

    errors = errors_in_threads(work, range(8))
    assert not errors, errors


@pytest.mark.parametrize("hessian,subset", [("kron", "last_layer"), ("kron", "all"),
                                            ("diag", "all")])
def test_ctrl_c_stops_a_long_predictive(hessian, subset):
    """SIGINT half a second into the predictive of millions of points: KeyboardInterrupt within
    a second (inside one tile's program or between tiles), and the object still predicts."""
    from test_hardening import INTERRUPT_AFTER, expect_lines
    expect_lines(INTERRUPT_AFTER + f"""
model = fa.Chain(fa.Dense(10, 256, "tanh"), fa.Dense(256, 256, "tanh"), fa.Dense(256, 3),
                 dtype=np.float32, seed=0)
X = np.random.default_rng(0).standard_normal((2_000_000, 10)).astype(np.float32)
y = np.zeros(2_000_000, np.int64)
la = fa.Laplace(model, "classification", hessian="{hessian}", subset="{subset}").fit(X[:500],
                                                                                   y[:500])
want = la.predict(X[:5])
t0 = interrupt_after(0.5)
try:
    la.predict(X)
    print("not interrupted")
except KeyboardInterrupt:
    print("KeyboardInterrupt", time.perf_counter() - t0 - 0.5 < 1.0)
print("still predicts", np.array_equal(la.predict(X[:5]), want))
""", ["KeyboardInterrupt True", "still predicts True"], timeout=300)


def test_ctrl_c_stops_a_long_fit():
    """SIGINT half a second into a fit over millions of rows: KeyboardInterrupt within a second,
    and the object keeps its previous fit."""
    from test_hardening import INTERRUPT_AFTER, expect_lines
    expect_lines(INTERRUPT_AFTER + """
model = fa.Chain(fa.Dense(10, 64, "tanh"), fa.Dense(64, 1), dtype=np.float32, seed=0)
X = np.random.default_rng(0).standard_normal((4_000_000, 10)).astype(np.float32)
Y = np.zeros((4_000_000, 1), np.float32)
la = fa.Laplace(model, "regression", hessian="full").fit(X[:100], Y[:100])
before = la.log_marginal_likelihood()
t0 = interrupt_after(0.5)
try:
    la.fit(X, Y)
    print("not interrupted")
except KeyboardInterrupt:
    print("KeyboardInterrupt", time.perf_counter() - t0 - 0.5 < 1.0)
print("kept", la.log_marginal_likelihood() == before)
""", ["KeyboardInterrupt True", "kept True"], timeout=300)
