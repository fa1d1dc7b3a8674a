"""`fa.Laplace`: the Laplace approximation of a trained Chain's posterior, p(θ | D) ≈ N(θ*, Σ),
Σ⁻¹ = c·H₀ + diag(λ), with H₀ the likelihood's curvature at the trained parameters θ* (the
generalised Gauss-Newton matrix or the empirical Fisher, from `Chain.fisher`), c its noise scale
and λ the prior precision. Its marginal likelihood fits λ and the noise σ; its predictive is
the linearised network's (the GLM predictive): f(x) ~ N(f(x; θ*), J(x) Σ J(x)ᵀ).

The curvature streams over the data in chunks (memory independent of N) and is decomposed once
per fit (`_posterior.py`); evaluating the marginal likelihood at another (λ, σ) then costs O(P).
"""
from __future__ import annotations

import math
import threading
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _posterior
from ._compile import compile, spec
from ._curvature import _factor_outs, checked_data, kron_shapes, seeded_program
from ._dense import Dense
from ._fastad import dense_layers, layer_rows
from ._losses import unit_rows

_LIKELIHOODS = ("regression", "classification")
_SUBSETS = ("all", "last_layer")
_HESSIANS = ("full", "diag", "kron")
_CURVATURES = ("ggn", "ef")
_LINKS = ("probit", "mc")

# Rows of the data per chunk of `fit`: bounds the memory of the features (last layer) and of
# the loss's buffers whatever N is.
FIT_ROWS = 1 << 14
# Elements of a tile of the predictive's Jacobian rows (tile rows × K × P).
PREDICT_TILE_ELEMENTS = 1 << 20


def _features(model: Any) -> Any:
    """φ(p, X): the model's layers but the last, as a traceable function."""
    def apply(p: Any, X: Any) -> Any:
        h = X
        for layer in model.layers[:-1]:
            h = layer.apply(p, h)
        return h
    return apply


def _features_program(model: Any) -> Any:
    """φ(θ, X, out=None): the model's features (its layers but the last), compiled once."""
    prog = model._program("features", lambda: compile(
        _features(model), spec((model.n_params,), model.dtype), model._x_spec(),
        dtype=model.dtype))
    return lambda params, X, out=None: prog(params, X, out=out)


def _is_dask(a: Any) -> bool:
    return hasattr(a, "__dask_graph__")


class _DataSums:
    """What `fit` sums over the data at θ*: the data term (the loss) and the curvature, chunk
    by chunk. Picklable (its models travel as model files do, their programs compiled where
    they run), so that Dask workers can each sum their chunks of the data (`fastad.dask`)."""

    def __init__(self, model: Any, theta: np.ndarray, net: Any, features: bool, kind: str,
                 hessian: str, loss: str) -> None:
        self.model, self.theta, self.net, self.features = model, theta, net, features
        self.kind, self.hessian, self.loss = kind, hessian, loss

    def add(self, X: np.ndarray, Y: Any, out: Any) -> float:
        """Adds the curvature of rows X, Y (checked) to `out`; returns their data term."""
        net, loss, K = self.net, self.loss, self.model.out_features
        features = _features_program(self.model) if self.features else None
        data_term = 0.0
        for r0 in range(0, X.shape[0], FIT_ROWS):
            r1 = min(X.shape[0], r0 + FIT_ROWS)
            inputs = X[r0:r1] if features is None else features(self.theta, X[r0:r1])
            data_term += net.loss(inputs, Y[r0:r1], loss=loss) * (
                1 if loss == "sse" else (r1 - r0) * (K if loss == "bce_logits" else 1))
            net.fisher(inputs, Y[r0:r1], loss=loss, kind=self.kind, structure=self.hessian,
                       out=out, accumulate=True)
        return data_term


class _Fitted:
    """What a fit found; never changed afterwards (a new fit makes a new one)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class _Hyper:
    """The prior precision of each parameter, the form it was given in ("scalar", "layer" or
    "param"), and σ; replaced whole when any of them changes."""

    def __init__(self, lam: np.ndarray, kind: str, sigma: float) -> None:
        self.lam, self.kind, self.sigma = lam, kind, sigma


class Laplace:
    """The Laplace approximation of a trained `fa.Chain`'s posterior over its parameters.

    ``la = fa.Laplace(model, "regression")``, then ``la.fit(X, Y)`` at the trained parameters,
    ``la.optimize_prior_precision()`` to fit the prior (and σ) by the marginal likelihood, and
    ``la.predict(Xs)`` for the predictive.

    - `likelihood`: "regression" (Gaussian noise of standard deviation `sigma_noise`; the
      network trained with "sse" or "mse") or "classification" (softmax cross-entropy for
      K ≥ 2 outputs, a Bernoulli of one logit, "bce_logits", for K = 1).
    - `subset`: "all" parameters, or the "last_layer" only (the rest fixed at their trained
      values: the last layer's inputs are computed once, and the predictive is closed form).
    - `hessian`: "full" (P × P), "diag", or "kron" (per dense layer, Kronecker factors of the
      curvature: K-FAC).
    - `curvature`: "ggn" (the generalised Gauss-Newton matrix, J Λ Jᵀ) or "ef" (the empirical
      Fisher, Σ g gᵀ of per-sample gradients).
    - `prior_precision`: λ of the prior N(prior_mean, λ⁻¹ I): a scalar, one value per layer (of
      the subset), or one per parameter; "l2" takes it from the `l2=` of the model's last `fit`
      (see the README: the training objective is the posterior's negative log up to a factor).
    - `prior_mean`: a scalar or one value per parameter of the subset.

    Everything the object returns is float64. Methods may be called from several threads; `fit`
    and `optimize_prior_precision` replace the fitted state whole, so a concurrent `predict`
    sees the old state or the new one, never a mixture.
    """

    def __init__(self, model: Any, likelihood: str = "regression", *, subset: str = "all",
                 hessian: str = "full", curvature: str = "ggn",
                 prior_precision: Union[float, str, Sequence[float], np.ndarray] = 1.0,
                 sigma_noise: float = 1.0,
                 prior_mean: Union[float, Sequence[float], np.ndarray] = 0.0) -> None:
        from ._chain import Chain
        if not isinstance(model, Chain):
            raise TypeError(f"fa.Laplace takes a fa.Chain, got {type(model).__name__}")
        for name, value, allowed in (("likelihood", likelihood, _LIKELIHOODS),
                                     ("subset", subset, _SUBSETS),
                                     ("hessian", hessian, _HESSIANS),
                                     ("curvature", curvature, _CURVATURES)):
            if value not in allowed:
                raise ValueError(f"fa.Laplace: {name} must be one of {allowed}, got {value!r}")
        self.model = model
        self.likelihood, self.subset, self.hessian, self.curvature = (
            likelihood, subset, hessian, curvature)
        K = model.out_features
        if likelihood == "regression":
            self._loss = "sse"
        else:
            self._loss = "cross_entropy" if K >= 2 else "bce_logits"
        last = model.layers[-1]
        self._offset = last._offset if subset == "last_layer" else 0
        self.n_params = model.n_params - self._offset
        layers = model.layers[-1:] if subset == "last_layer" else model.layers
        # The prior's groups: the layer of each parameter of the subset.
        self._layer_of = np.repeat(np.arange(len(layers)), [l.n_params for l in layers])
        sigma = _positive("sigma_noise", sigma_noise)
        if isinstance(prior_precision, str):
            if prior_precision != "l2":
                raise ValueError(f'prior_precision must be a number, an array or "l2", got '
                                 f'{prior_precision!r}')
            prior_precision = self._precision_from_l2(sigma)
        self._hyper = self._hyper_of(prior_precision, sigma)
        mean = np.asarray(prior_mean, np.float64)
        if mean.ndim == 0:
            mean = np.full(self.n_params, float(mean))
        if mean.shape != (self.n_params,) or not np.isfinite(mean).all():
            raise ValueError(f"prior_mean must be a finite scalar or have shape "
                             f"({self.n_params},) (the subset's parameters); got shape "
                             f"{np.shape(prior_mean)}")
        self.prior_mean = mean
        self._fitted: Optional[_Fitted] = None
        # (fit, hyper-parameters, the covariance's root) last computed; replaced whole, so a
        # thread reading it never pairs one fit's root with another's state.
        self._root: Tuple[Any, Any, Any] = (None, None, None)
        self._lock = threading.Lock()  # one fit or optimisation at a time
        self._scratch = threading.local()  # the predictive's buffers, per thread

    # Hyper-parameters ---------------------------------------------------------------------------

    def _hyper_of(self, prior_precision: Any, sigma: float) -> _Hyper:
        lam = np.asarray(prior_precision, np.float64)
        n_layers = int(self._layer_of[-1]) + 1
        if lam.ndim == 0:
            kind, lam = "scalar", np.full(self.n_params, float(lam))
        elif lam.shape == (n_layers,):
            kind, lam = "layer", lam[self._layer_of]
        elif lam.shape == (self.n_params,):
            kind, lam = "param", lam.copy()
        else:
            raise ValueError(
                f"prior_precision must be a scalar, one value per layer ({n_layers},) or one "
                f"per parameter ({self.n_params},); got shape {lam.shape}")
        if not (np.isfinite(lam).all() and (lam > 0).all()):
            raise ValueError(f"prior_precision must be positive and finite; got "
                             f"{prior_precision!r}")
        if kind == "param" and self.hessian == "kron":
            raise ValueError("hessian='kron' takes one prior precision per layer at most (a "
                             "scalar or one value per layer), not one per parameter")
        return _Hyper(lam, kind, sigma)

    def _precision_from_l2(self, sigma: float) -> float:
        """The prior precision the model's last `fit(l2=λ)` implies: its objective is
        w·Σ_b nll_b + ½λ²‖θ‖², and the posterior's negative log Σ_b nll_b + ½τ‖θ‖², so τ = λ²/w
        (see the README)."""
        record = getattr(self.model, "_fit_record", None)
        if record is None:
            raise ValueError('prior_precision="l2" reads the l2= of the model\'s last fit in '
                             'this process, and this model has not been fitted: pass a number')
        loss, l2, batch, n = record
        name = getattr(loss, "name", loss)
        K = self.model.out_features
        weights = {  # w of each training loss, for the likelihoods it matches
            ("regression", "sse"): 2 * sigma**2 * min(batch, n) / n,
            ("regression", "mse"): 2 * sigma**2 / (n * K),
            ("classification", "cross_entropy"): 1.0 / n,
            ("classification", "bce_logits"): 1.0 / (n * K),
        }
        w = weights.get((self.likelihood, name))
        if w is None:
            raise ValueError(f'prior_precision="l2": the model was trained with loss {name!r}, '
                             f'which is not a {self.likelihood} likelihood fastad knows; pass a '
                             f'number')
        if l2 <= 0:
            raise ValueError('prior_precision="l2": the model was trained without l2 (a flat, '
                             'improper prior); pass a number')
        return l2 * l2 / w

    @property
    def prior_precision(self) -> Union[float, np.ndarray]:
        """λ: a float, or an array (per layer or per parameter), as given or fitted."""
        h = self._hyper
        if h.kind == "scalar":
            return float(h.lam[0])
        if h.kind == "layer":
            return h.lam[np.searchsorted(self._layer_of, np.arange(self._layer_of[-1] + 1))]
        return h.lam.copy()

    @prior_precision.setter
    def prior_precision(self, value: Any) -> None:
        self._hyper = self._hyper_of(value, self._hyper.sigma)

    @property
    def sigma_noise(self) -> float:
        """σ, the regression noise's standard deviation (1 for classification)."""
        return self._hyper.sigma

    @sigma_noise.setter
    def sigma_noise(self, value: float) -> None:
        h = self._hyper
        self._hyper = _Hyper(h.lam, h.kind, _positive("sigma_noise", value))

    # Fitting ------------------------------------------------------------------------------------

    def fit(self, X: Any, Y: Any) -> "Laplace":
        """Computes the curvature at the model's current parameters θ* (which the object keeps:
        later changes to the model do not move it), streaming X and Y through it in chunks, so
        memory does not grow with N. X and Y may be Dask arrays chunked by rows: then each
        chunk is summed on a Dask worker (`fastad.dask`). Returns self."""
        model, loss = self.model, self._loss
        dask = _is_dask(X) or _is_dask(Y)
        if not dask:
            X, Y, _ = checked_data(model, X, Y, loss)
        with self._lock:
            theta = model.params.copy()
            net, features = self._net(theta)
            kind = "ggn" if self.curvature == "ggn" else "empirical"
            layers = dense_layers(seeded_program(net)) if self.hessian == "kron" else None
            out = self._accumulators(net, layers)
            sums = _DataSums(model, theta, net, features is not None, kind, self.hessian, loss)
            if dask:
                from .dask import _laplace_sums
                n, data_term = _laplace_sums(sums, X, Y, out)
            else:
                n, data_term = X.shape[0], sums.add(X, Y, out)
            unit = self._unit_scale()
            if self.hessian == "full":
                post = _posterior.Full(out.astype(np.float64) * unit)
            elif self.hessian == "diag":
                post = _posterior.Diag(out.astype(np.float64) * unit)
            else:
                post = _posterior.Kron(
                    [_posterior.KronLayer(A, G, unit / max(n, 1), _posterior.kron_index(*layer),
                                          net.dtype)
                     for A, G, layer in zip(*out, layers)],
                    self.n_params)
            self._fitted = _Fitted(
                theta=theta, net=net, net_params=net.params.copy(), features=features,
                posterior=post, n=n, outputs=model.out_features, data_term=data_term,
                delta=theta[self._offset:].astype(np.float64) - self.prior_mean)
        return self

    def _net(self, theta: np.ndarray):
        """The network whose parameters are the subset, and the features it takes (None: X)."""
        model = self.model
        if self.subset == "all":
            return model, None
        last = model.layers[-1]
        net_layer = Dense(last.in_features, last.out_features, last.activation,
                          weight=last.weight, bias=last.bias, use_bias=last.use_bias)
        from ._chain import Chain
        net = Chain(net_layer, dtype=model.dtype)
        if len(model.layers) == 1:
            return net, None
        return net, _features_program(model)

    def _linear_head(self, U: np.ndarray) -> Tuple[Any, Tuple[np.ndarray, ...]]:
        """For a linear last layer's Kronecker predictive, one program of (θ, X, U[:k], U[k],
        H_f, H_v) (without a bias, no U[k]): with h = ā U (ā = [φ(x), 1], U the eigenvectors
        of the layer's factor A), it returns h H_f + h² H_v, so that H_f = [Uᵀ[W | b]ᵀ | 0] and
        H_v = [0 | 1/eᵀ] give [f(x) | w(x)] (M, 2K), w_o = Σ_j h_j² / e_oj, in one tiled
        sweep: the features φ and h never leave the tiles. Returns it and its U arguments."""
        model = self.model
        k, dt, K = model.layers[-1].in_features, model.dtype, model.out_features
        features, w = _features(model), U.shape[0]
        bias = w > k

        def head(h: Any, Hf: Any, Hv: Any) -> Any:
            return h @ Hf + (h * h) @ Hv
        specs = [spec((model.n_params,), dt), model._x_spec(), spec((k, w), dt)]
        heads = [spec((w, 2 * K), dt)] * 2
        if bias:
            prog = model._program(("linear head", w), lambda: compile(
                lambda p, X, Uf, u1, Hf, Hv: head(features(p, X) @ Uf + u1, Hf, Hv),
                *specs, spec((w,), dt), *heads, dtype=dt))
            return prog, (np.ascontiguousarray(U[:k], dt), np.ascontiguousarray(U[k], dt))
        prog = model._program(("linear head", w), lambda: compile(
            lambda p, X, Uf, Hf, Hv: head(features(p, X) @ Uf, Hf, Hv),
            *specs, *heads, dtype=dt))
        return prog, (np.ascontiguousarray(U, dt),)

    def _accumulators(self, net: Any, layers: Any) -> Any:
        """Zeroed arrays for the curvature's sums: the matrix, its diagonal, or for "kron" the
        (A, G) lists of `layers` (`dense_layers`' tuples)."""
        p = net.n_params
        if self.hessian == "diag":
            return np.zeros(p, net.dtype)
        if self.hessian == "kron":
            return _factor_outs(net, None, kron_shapes(layers), False)
        try:
            return np.zeros((p, p), net.dtype)
        except MemoryError:
            raise MemoryError(
                f"hessian='full' needs a {p} × {p} matrix ({p * p * net.dtype.itemsize / 2**30:.1f} "
                f"GiB) for the {p} parameters: use hessian='kron' or 'diag', or "
                f"subset='last_layer'") from None

    def _unit_scale(self) -> float:
        """H₀ = this × `fisher`'s sum: the losses' factors (sse's Λ = 2I) taken out."""
        if self.likelihood == "classification":
            return 1.0
        return 0.5 if self.curvature == "ggn" else 0.25

    def _noise_scale(self, sigma: float) -> float:
        """c(σ): the likelihood's curvature is c·H₀."""
        if self.likelihood == "classification":
            return 1.0
        return sigma ** -2 if self.curvature == "ggn" else sigma ** -4

    def _state(self) -> _Fitted:
        f = self._fitted
        if f is None:
            raise RuntimeError("fa.Laplace: call fit(X, Y) first")
        return f

    # Marginal likelihood ------------------------------------------------------------------------

    def log_marginal_likelihood(self, prior_precision: Any = None,
                                sigma_noise: Optional[float] = None) -> float:
        """log p(D | λ, σ) under the Laplace approximation, at the given prior precision and
        noise (by default the current ones):
        log p(D | θ*) − ½ (log det Σ⁻¹ − log det λ) − ½ (θ* − μ)ᵀ diag(λ) (θ* − μ),
        the first term −½ N K log(2πσ²) − ‖Y − f‖²/(2σ²) for regression, −Σ cross-entropy for
        classification. O(P) per call once fitted (O(P³) for hessian='full' with more than one
        prior precision)."""
        h = self._hyper
        if prior_precision is not None or sigma_noise is not None:
            sigma = h.sigma if sigma_noise is None else _positive("sigma_noise", sigma_noise)
            lam = self.prior_precision if prior_precision is None else prior_precision
            h = self._hyper_of(lam, sigma)
        groups, n_groups, lam_g = self._groups(h)
        u = np.append(np.log(lam_g), math.log(h.sigma))
        return -self._objective(u, self._evidence(self._state(), groups, n_groups))[0]

    def _groups(self, h: _Hyper) -> Tuple[np.ndarray, int, np.ndarray]:
        """Each parameter's prior group, the number of groups, and each group's λ."""
        if h.kind == "scalar":
            return np.zeros(self.n_params, np.intp), 1, h.lam[:1]
        if h.kind == "layer":
            n = int(self._layer_of[-1]) + 1
            return self._layer_of, n, h.lam[np.searchsorted(self._layer_of, np.arange(n))]
        return np.arange(self.n_params), self.n_params, h.lam

    @staticmethod
    def _evidence(f: _Fitted, groups: np.ndarray, n_groups: int) -> Tuple[Any, ...]:
        """What `_objective` reads for one grouping of the prior: the fit, the groups, and per
        group its parameter count and Σ (θ* − μ)²."""
        counts = np.bincount(groups, minlength=n_groups)
        q = np.bincount(groups, f.delta * f.delta, minlength=n_groups)
        return f, groups, n_groups, counts, q

    def _objective(self, u: np.ndarray, evidence: Tuple[Any, ...]) -> Tuple[float, np.ndarray]:
        """−log p(D | λ, σ) and its gradient with respect to u = (log λ_g ..., log σ)."""
        f, groups, n_groups, counts, q = evidence
        lam_g, sigma = np.exp(u[:-1]), math.exp(u[-1])
        lam = lam_g[groups]
        c = self._noise_scale(sigma)
        logdet, t = f.posterior.logdet_and_traces(c, lam, groups, n_groups)
        grad = np.empty(u.size)
        # ∂/∂ log λ_g of log p(D): −½ t_g + ½ n_g − ½ λ_g q_g.
        grad[:-1] = -0.5 * t + 0.5 * counts - 0.5 * lam_g * q
        lml = -0.5 * (logdet - float(counts @ np.log(lam_g))) - 0.5 * float(lam_g @ q)
        if self.likelihood == "regression":
            nk, sse = f.n * f.outputs, f.data_term
            lml += -0.5 * nk * math.log(2 * math.pi * sigma**2) - 0.5 * sse / sigma**2
            dlogc = -2.0 if self.curvature == "ggn" else -4.0
            grad[-1] = (-nk + sse / sigma**2) - 0.5 * (self.n_params - t.sum()) * dlogc
        else:
            lml -= f.data_term
            grad[-1] = 0.0
        return -lml, -grad

    def optimize_prior_precision(self, sigma_noise: bool = True) -> "Laplace":
        """Sets the prior precision (and, for regression with ``sigma_noise=True``, σ) to
        maximise `log_marginal_likelihood`, keeping its form: one value, or one per layer (a
        per-parameter prior is refused: it has as many values as data can hardly fix). BFGS on
        the logarithms with the exact gradient; each step is O(P) once fitted. Returns self."""
        f = self._state()
        with self._lock:
            h = self._hyper
            if h.kind == "param":
                raise ValueError("optimize_prior_precision fits a scalar or per-layer prior "
                                 "precision; set la.prior_precision to one of those first")
            groups, n_groups, lam_g = self._groups(h)
            fit_sigma = bool(sigma_noise) and self.likelihood == "regression"
            u0 = np.append(np.log(lam_g), math.log(h.sigma))
            evidence = self._evidence(f, groups, n_groups)

            def fg(v: np.ndarray) -> Tuple[float, np.ndarray]:
                u = np.append(v, u0[-1]) if not fit_sigma else v
                value, grad = self._objective(u, evidence)
                return value, (grad if fit_sigma else grad[:-1])

            v = _posterior.minimize(fg, u0 if fit_sigma else u0[:-1])
            lam = np.exp(v[:n_groups])[groups]
            sigma = math.exp(v[-1]) if fit_sigma else h.sigma
            self._hyper = _Hyper(lam, h.kind, sigma)
        return self

    # The posterior ------------------------------------------------------------------------------

    def _covariance_root(self) -> Tuple[_Fitted, _Hyper, Any]:
        f, h = self._state(), self._hyper
        cached_f, cached_h, root = self._root
        if cached_f is not f or cached_h is not h:
            root = f.posterior.covariance_root(self._noise_scale(h.sigma), h.lam)
            self._root = (f, h, root)
        return f, h, root

    @property
    def posterior_precision(self) -> Any:
        """Σ⁻¹ in the structure's form: (P, P) for "full"; its diagonal (P,) for "diag"; for
        "kron" a list with, per layer, (G, A, λ): the block G ⊗ A + λ I over the layer's
        parameters ordered as the rows of [W | b]. P counts the subset's parameters."""
        f, h = self._state(), self._hyper
        return f.posterior.precision(self._noise_scale(h.sigma), h.lam)

    @property
    def posterior_variance(self) -> np.ndarray:
        """Σ: (P, P) for "full"; the marginal variances (P,) for "diag" and for "kron" (whose
        blocks are never formed)."""
        f, _, root = self._covariance_root()
        return f.posterior.covariance(root)

    def sample(self, n: int, seed: Optional[int] = 0) -> np.ndarray:
        """n draws θ ~ N(θ*, Σ), (n, P) over all the model's parameters (for
        subset="last_layer", the others at θ*): each row can be assigned to ``model.params``."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        f, _, root = self._covariance_root()
        rng = np.random.default_rng(seed)
        out = np.empty((int(n), self.model.n_params))
        out[:] = f.theta
        z = rng.standard_normal((int(n), self.n_params))
        out[:, self._offset:] += f.posterior.sample(root, z)
        return out

    # The predictive -----------------------------------------------------------------------------

    def functional_variance(self, Xs: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """J Σ Jᵀ at each row of Xs, (M, K, K): the variance of the linearised network's
        outputs f(x; θ) = f(x; θ*) + J(x)(θ − θ*) under the posterior."""
        f, _, root = self._covariance_root()
        Xs = self.model._x(Xs)
        M, K = Xs.shape[0], self.model.out_features
        fvar = _out64(out, (M, K, K), "out")
        for r0, r1, _, V in self._tiles(f, root, Xs, need_mean=False):
            fvar[r0:r1] = V
        return fvar

    def predict(self, Xs: Any, *, link: str = "probit", n_samples: int = 100,
                seed: Optional[int] = 0, out: Any = None) -> Any:
        """The predictive at each row of Xs.

        Regression: ``(mean, var)``, each (M, K): the network's output at θ* and the diagonal
        of J Σ Jᵀ plus σ². Classification: the class probabilities (M, K) (for one logit, the
        probability of class 1, (M, 1)), with ``link="probit"`` (softmax(f / √(1 + π/8 · v)),
        v the diagonal of J Σ Jᵀ: MacKay's approximation) or ``link="mc"`` (the mean of
        softmax over `n_samples` draws f ~ N(f*, J Σ Jᵀ), from `seed`).

        `out`: (mean, var) arrays for regression, one array for classification, float64 (M, K);
        after the first call of a size, a call with `out=` allocates no memory of that size."""
        if link not in _LINKS:
            raise ValueError(f"link must be one of {_LINKS}, got {link!r}")
        if self.likelihood == "regression" and link != "probit":
            raise ValueError("link applies to classification; regression's predictive is "
                             "Gaussian: (mean, var)")
        f, h, root = self._covariance_root()
        Xs = self.model._x(Xs)
        M, K = Xs.shape[0], self.model.out_features
        if self.likelihood == "regression":
            if out is None:
                mean, var = np.empty((M, K)), np.empty((M, K))
            elif not isinstance(out, tuple) or len(out) != 2:
                raise TypeError("out must be a tuple (mean, var) of two float64 (M, K) arrays")
            else:
                mean, var = _out64(out[0], (M, K), "out[0]"), _out64(out[1], (M, K), "out[1]")
            for r0, r1, F, v in self._tiles(f, root, Xs, diagonal=True):
                mean[r0:r1] = F
                np.copyto(var[r0:r1], v)
            var += h.sigma ** 2
            return mean, var
        if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        probs = np.empty((M, K)) if out is None else _out64(out, (M, K), "out")
        rng = np.random.default_rng(seed) if link == "mc" else None
        for r0, r1, F, V in self._tiles(f, root, Xs, diagonal=link == "probit"):
            if link == "probit":  # in place, column by column: broadcasting would buffer
                z = probs[r0:r1]
                np.copyto(z, V)
                z *= math.pi / 8.0
                z += 1.0
                np.sqrt(z, out=z)
                np.divide(F, z, out=z)
                _link_in_place(z, self._scratch.buffers["column"][:r1 - r0])
            else:
                L = np.linalg.cholesky(V + 1e-12 * np.eye(K) * (1.0 + np.abs(V).max()))
                draws = F + np.einsum("mkl,sml->smk", L, rng.standard_normal((n_samples,
                                                                              r1 - r0, K)))
                probs[r0:r1] = _link(draws).mean(axis=0)
        return probs

    def _tiles(self, f: _Fitted, root: Any, Xs: np.ndarray, need_mean: bool = True,
               diagonal: bool = False):
        """(start, stop, f* (t, K), J Σ Jᵀ (t, K, K) — or with `diagonal` only its diagonal
        (t, K)) per tile of Xs's rows, in float64, from this thread's reused buffers."""
        K, M = self.model.out_features, Xs.shape[0]
        kron = self.hessian == "kron"
        # A linear last layer after features: one program gives f and J Σ Jᵀ's weights.
        head = kron and f.features is not None and self.model.layers[-1].activation is None
        # Elements per row of a tile: the Jacobian's rows, or for "kron" each layer's rows.
        width = (2 * K * K if head else
                 sum(l.U.shape[0] + 2 * K * l.V.shape[0] for l in f.posterior.layers) if kron
                 else 2 * K * self.n_params)
        t = max(1, min(M, PREDICT_TILE_ELEMENTS // max(1, width)))
        s = self._buffers(f, t, "head" if head else "kron" if kron else "full")
        for r0 in range(0, M, t):
            r1 = min(M, r0 + t)
            n = r1 - r0
            F, V = s["mean"][:n], s["fvar"][:n]
            if "head" in s:  # a linear last layer: [f | w] from one program, then J Σ Jᵀ
                prog, U_args = s["head"]
                if s["H_v"][0] is not root:  # the prior or σ changed
                    s["H_v"] = (root, np.zeros_like(s["H_f"]))
                    s["H_v"][1][:, K:] = root[0][1]
                fw = prog(f.theta, Xs[r0:r1], *U_args, s["H_f"], s["H_v"][1], out=s["fw"][:n])
                F[...] = fw[:, :K]
                weights = s["weights"][:n]
                weights[...] = fw[:, K:]
                if diagonal:
                    V = s["diagonal"][:n]
                f.posterior.layers[0].output_variance(weights, V, diagonal)
                yield r0, r1, F, V
                continue
            V[...] = 0.0
            inputs = (Xs[r0:r1] if f.features is None
                      else f.features(f.theta, Xs[r0:r1], out=s["features"][:n]))
            if need_mean:
                F[...] = s["forward"](f.net_params, inputs, out=s["outputs"][:n])
            if kron:
                a = [a[:n] for a in s["a"]]
                d64 = [d[:, :n] for d in s["d64"]]
                if s["linear"]:  # one linear layer: ā = [x, 1], and δ_k = e_k for output k
                    a[0][:, :inputs.shape[1]] = inputs
                for k in range(0 if s["linear"] else K):
                    layer_rows(s["seeded"], f.net_params, inputs, s["C"][k][:n],
                               adjoints=[d[:n] for d in s["d"]], inputs=a if k == 0 else None)
                    for d, d_out in zip(s["d"], d64):
                        d_out[k] = d[:n]
                f.posterior.functional_variance(root, a, [None] if s["linear"] else d64, V,
                                                s["kron"])
            else:
                J = s["J"][:n]
                for k in range(K):
                    rows = s["rows"][:n]
                    s["seeded"].per_sample_grad(f.net_params, inputs, s["C"][k][:n], out=rows)
                    J[:, k, :] = rows
                f.posterior.functional_variance(root, J, V, s["scratch"][:n])
            yield r0, r1, F, (np.diagonal(V, axis1=1, axis2=2) if diagonal else V)

    def _buffers(self, f: _Fitted, t: int, path: str) -> dict:
        """This thread's buffers for tiles of t rows on `path` ("head": a linear last layer's
        Kronecker predictive; "kron"; "full": the Jacobian rows of "full" and "diag"), made on
        first use, then reused."""
        s = getattr(self._scratch, "buffers", None)
        if s is not None and s["fit"] is f and s["tile"] == t:
            return s
        net, K, P = f.net, self.model.out_features, self.n_params
        s = {"fit": f, "tile": t, "mean": np.empty((t, K)), "fvar": np.empty((t, K, K)),
             "column": np.empty(t)}
        if path == "head":
            U, last = f.posterior.layers[0].U, net.layers[-1]
            s["head"] = self._linear_head(U)
            # [W | b] at the fit: the parameters are W (K × k) row by row, then b.
            k = last.in_features
            W = f.net_params[:K * k].astype(np.float64).reshape(K, k)
            Wb = np.hstack([W, f.net_params[K * k:K * k + K, None]]) if last.use_bias else W
            s["H_f"] = np.zeros((U.shape[0], 2 * K), net.dtype)
            s["H_f"][:, :K] = U.T @ Wb.T
            s["H_v"] = (None, None)  # made from the covariance's root by the first tile
            s["fw"], s["weights"] = np.empty((t, 2 * K), net.dtype), np.empty((t, K))
            s["diagonal"] = np.empty((t, K))
            self._scratch.buffers = s
            return s
        s.update({"seeded": seeded_program(net), "forward": net._forward_program(),
                  "outputs": np.empty((t, K), net.dtype),
                  "features": np.empty((t, net.in_features), net.dtype),
                  "C": [unit_rows(t, K, k, dtype=net.dtype) for k in range(K)]})
        if path == "kron":
            layers = dense_layers(s["seeded"])
            s["a"] = [np.empty((t, k + (b is not None)), net.dtype) for _, b, k, _ in layers]
            s["d"] = [np.empty((t, o), net.dtype) for _, _, _, o in layers]
            s["d64"] = [np.empty((K,) + d.shape) for d in s["d"]]
            s["kron"] = f.posterior.scratch(f.posterior.layers, t, K)
            last = net.layers[-1]
            s["linear"] = len(net.layers) == 1 and last.activation is None
            if s["linear"] and last.use_bias:  # the bias's 1s never change
                s["a"][0][:, -1] = 1.0
        else:
            s["J"], s["scratch"] = np.empty((t, K, P)), np.empty((t, K, P))
            s["rows"] = np.empty((t, P), net.dtype)
        self._scratch.buffers = s
        return s

    def __repr__(self) -> str:
        state = "fitted" if self._fitted is not None else "not fitted"
        return (f"fa.Laplace({self.likelihood}, subset={self.subset!r}, hessian={self.hessian!r}, "
                f"curvature={self.curvature!r}, {self.n_params} params, {state})")


def _positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


def _out64(out: Any, shape: Tuple[int, ...], name: str) -> np.ndarray:
    if out is None:
        return np.empty(shape)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array of dtype float64 and shape {shape}, got "
                        f"{type(out).__name__}")
    if out.dtype != np.float64:
        raise TypeError(f"{name} has dtype {out.dtype}; expected float64")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}; expected {shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def _link_in_place(z: np.ndarray, column: np.ndarray) -> None:
    """z (n, K) ← `_link(z)`, one column at a time (K is small); `column` (n,) is scratch."""
    if z.shape[1] == 1:
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
        return
    np.max(z, axis=1, out=column)
    for k in range(z.shape[1]):
        np.subtract(z[:, k], column, out=z[:, k])
    np.exp(z, out=z)
    np.sum(z, axis=1, out=column)
    for k in range(z.shape[1]):
        np.divide(z[:, k], column, out=z[:, k])


def _link(z: np.ndarray) -> np.ndarray:
    """Class probabilities of logits z (..., K): softmax, or the sigmoid of one logit."""
    if z.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
