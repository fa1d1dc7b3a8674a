"""The Gaussian posterior of a Laplace approximation, one class per Hessian structure.

Each is built once per fit from the likelihood's curvature H₀ (unit noise) and decomposed once
(eigendecompositions by NumPy's LAPACK); the posterior precision is then c·H₀ + diag(λ), with c
the likelihood's scale (σ⁻² or σ⁻⁴ for regression, 1 for classification) and λ the prior
precision of each parameter. What the marginal likelihood, its gradient, the predictive and
sampling need of it:

- ``logdet_and_traces(c, lam, groups, n_groups)``: log det of the precision, and for each prior group g
  (parameters sharing one prior precision) t_g = Σ_{i∈g} λ_i Σ_ii, Σ the covariance. They give
  the gradient: ∂ log det / ∂ log λ_g = t_g and ∂ log det / ∂ log c = P − Σ_g t_g. O(P) for the
  diagonal, the Kronecker factors and a full matrix with one prior precision (its eigenvalues
  shift); O(P³) for a full matrix with several.
- ``covariance_root(c, lam)`` (computed once per hyper-parameters), from which
  ``functional_variance``, ``sample`` and ``covariance`` (the structure's natural form: the
  matrix, or the marginal variances) work; and ``precision``.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from ._compile import compile, spec


def _eigh(M: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0: the curvatures are positive semi-definite, rounding aside)
    and eigenvectors of a symmetric matrix."""
    s, V = np.linalg.eigh(np.asarray(M, np.float64))
    return np.maximum(s, 0.0), V


class Full:
    """The whole P × P precision c·H₀ + diag(λ)."""

    name = "full"

    def __init__(self, H0: np.ndarray) -> None:
        H0 = np.asarray(H0, np.float64)
        self.H0 = 0.5 * (H0 + H0.T)
        # Once per fit: the precision's eigenvalues at any noise and one prior precision are
        # c·s + λ. (The eigenvectors are not needed: the covariance's root is a Cholesky
        # factor's inverse, computed once per hyper-parameters.)
        self.s = np.maximum(np.linalg.eigvalsh(self.H0), 0.0)
        self.n_params = self.H0.shape[0]

    def precision(self, c: float, lam: np.ndarray) -> np.ndarray:
        H = c * self.H0
        H[np.diag_indices_from(H)] += lam
        return H

    def _cholesky(self, c: float, lam: np.ndarray) -> np.ndarray:
        try:
            return np.linalg.cholesky(self.precision(c, lam))
        except np.linalg.LinAlgError:
            raise ValueError("the posterior precision is not positive definite: give every "
                             "parameter a positive prior precision") from None

    def logdet_and_traces(self, c: float, lam: np.ndarray, groups: np.ndarray,
                          n_groups: int) -> Tuple[float, np.ndarray]:
        if n_groups == 1:
            e = c * self.s + lam[0]
            return float(np.log(e).sum()), np.array([lam[0] * (1.0 / e).sum()])
        L = self._cholesky(c, lam)
        Linv = np.linalg.inv(L)  # Σ = L⁻ᵀ L⁻¹: Σ_ii = ‖column i of L⁻¹‖²
        var = np.einsum("ji,ji->i", Linv, Linv)
        logdet = 2.0 * float(np.log(np.diagonal(L)).sum())
        return logdet, np.bincount(groups, lam * var, minlength=n_groups)

    def covariance_root(self, c: float, lam: np.ndarray) -> np.ndarray:
        """S with Σ = S Sᵀ: L⁻ᵀ, L the precision's Cholesky factor."""
        return np.linalg.inv(self._cholesky(c, lam)).T

    def covariance(self, root: np.ndarray) -> np.ndarray:
        return root @ root.T

    def functional_variance(self, root: np.ndarray, J: np.ndarray, out: np.ndarray,
                            scratch: np.ndarray) -> None:
        """out (M, K, K) = J Σ Jᵀ for J (M, K, P); `scratch` (M, K, P) float64."""
        M, K, P = J.shape
        np.matmul(J.reshape(M * K, P), root, out=scratch.reshape(M * K, P))  # one BLAS GEMM
        _gram_rows(scratch, out)

    def sample(self, root: np.ndarray, z: np.ndarray) -> np.ndarray:
        return z @ root.T


class Diag:
    """The diagonal of the precision, c·diag(H₀) + λ."""

    name = "diag"

    def __init__(self, h0: np.ndarray) -> None:
        self.h0 = np.asarray(h0, np.float64).copy()
        self.n_params = self.h0.size

    def precision(self, c: float, lam: np.ndarray) -> np.ndarray:
        return c * self.h0 + lam

    def logdet_and_traces(self, c: float, lam: np.ndarray, groups: np.ndarray,
                          n_groups: int) -> Tuple[float, np.ndarray]:
        d = self.precision(c, lam)
        return float(np.log(d).sum()), np.bincount(groups, lam / d, minlength=n_groups)

    def covariance_root(self, c: float, lam: np.ndarray) -> np.ndarray:
        return 1.0 / np.sqrt(self.precision(c, lam))  # the standard deviations

    def covariance(self, root: np.ndarray) -> np.ndarray:
        return root * root

    def functional_variance(self, root: np.ndarray, J: np.ndarray, out: np.ndarray,
                            scratch: np.ndarray) -> None:
        np.einsum("mkp,p->mkp", J, root, out=scratch)  # (a broadcasting ufunc would buffer)
        _gram_rows(scratch, out)

    def sample(self, root: np.ndarray, z: np.ndarray) -> np.ndarray:
        return z * root


def _gram_rows(W: np.ndarray, out: np.ndarray) -> None:
    """out[m] = W[m] W[m]ᵀ for W (M, K, P); for K = 1 a row-wise dot (a stacked matmul of
    1 × P rows would run M tiny products)."""
    if W.shape[1] == 1:
        np.einsum("mp,mp->m", W[:, 0], W[:, 0], out=out[:, 0, 0])
    else:
        np.matmul(W, W.transpose(0, 2, 1), out=out)


class KronLayer:
    """One dense layer's Kronecker factors, decomposed: its block of H₀ is
    scale·(G ⊗ A) in the order of the rows of [W | b], with scale = (unit factor)/N."""

    def __init__(self, A: np.ndarray, G: np.ndarray, scale: float, index: np.ndarray,
                 dtype: Any = np.float64) -> None:
        self.A, self.G, self.scale = np.asarray(A, np.float64), np.asarray(G, np.float64), scale
        self.sa, self.U = _eigh(self.A)
        self.sg, self.V = _eigh(self.G)
        # index[o * w + j]: where element (o, j) of [W | b] sits in the parameter vector.
        self.index = index
        # The predictive's one large product, ā U (M × w × w), runs in the network's dtype on
        # fastad's multithreaded GEMM.
        self.dtype = np.dtype(dtype)
        self.U_net = np.ascontiguousarray(self.U, self.dtype)
        self._rotate: Any = None  # its program, compiled by the first predictive
        self.outer_rows: Optional[np.ndarray] = None  # V_ko V_k'o, (n_out, n_out²), when needed
        self.squares: Optional[np.ndarray] = None  # V_ko², (n_out, n_out), when needed

    def rotate(self, a: np.ndarray, out: np.ndarray) -> None:
        """out = ā U (M × w)."""
        if self._rotate is None:
            w = self.U.shape[0]
            self._rotate = compile(lambda a, u: a @ u, spec((None, w), self.dtype),
                                   spec((w, w), self.dtype), dtype=self.dtype)
        self._rotate(a, self.U_net, out=out)

    def output_variance(self, weights: np.ndarray, out: np.ndarray,
                        diagonal: bool = False) -> None:
        """out (M, K, K) = J Σ Jᵀ of the outputs' own linear layer from its `weights` (M, K)
        float64, w_o = Σ_j ã_j / e_oj: there δ_k = e_k, so z_k = V[k] for every row and
        (J Σ Jᵀ)_kk' = Σ_o V_ko V_k'o w_o, one product with the rows V_ko V_k'o; with
        `diagonal`, out (M, K) = its diagonal, Σ_o V_ko² w_o."""
        M, K = weights.shape
        if diagonal:
            if self.squares is None:
                self.squares = np.ascontiguousarray((self.V ** 2).T)
            np.matmul(weights, self.squares, out=out)
            return
        if self.outer_rows is None:
            self.outer_rows = np.einsum("ko,lo->okl", self.V, self.V).reshape(K, K * K)
        np.matmul(weights, self.outer_rows, out=out.reshape(M, K * K))

    def eigenvalues(self, c: float, lam: float) -> np.ndarray:
        """(n_out, w): the precision's eigenvalues c·scale·sg_o·sa_j + λ."""
        return (c * self.scale) * np.outer(self.sg, self.sa) + lam


class Kron:
    """Per dense layer l, the block c·scale_l·(G_l ⊗ A_l) + λ_l I (K-FAC): one prior precision
    per layer at most."""

    name = "kron"

    def __init__(self, layers: List[KronLayer], n_params: int) -> None:
        self.layers = layers
        self.n_params = n_params

    def _lams(self, lam: np.ndarray) -> List[float]:
        lams = []
        for layer in self.layers:
            values = lam[layer.index]
            if values.size and np.ptp(values) != 0.0:
                raise ValueError("hessian='kron' takes one prior precision per layer at most "
                                 "(a scalar or one value per layer), not one per parameter")
            lams.append(float(values[0]) if values.size else 1.0)
        return lams

    def precision(self, c: float, lam: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray, float]]:
        return [(c * l.scale * l.G, l.A, lam_l) for l, lam_l in zip(self.layers, self._lams(lam))]

    def logdet_and_traces(self, c: float, lam: np.ndarray, groups: np.ndarray,
                          n_groups: int) -> Tuple[float, np.ndarray]:
        logdet, t = 0.0, np.zeros(n_groups)
        for layer, lam_l in zip(self.layers, self._lams(lam)):
            e = layer.eigenvalues(c, lam_l)
            logdet += float(np.log(e).sum())
            if layer.index.size:
                t[groups[layer.index[0]]] += lam_l * (1.0 / e).sum()
        return logdet, t

    def covariance_root(self, c: float, lam: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Per layer, 1/e (n_out, w): with the factors' eigenvectors, Σ_l = (V ⊗ U) diag(1/e)
        (V ⊗ U)ᵀ; and its transpose in the network's dtype, for the predictive."""
        inverse = [1.0 / l.eigenvalues(c, lam_l) for l, lam_l in zip(self.layers, self._lams(lam))]
        return [(inv, np.ascontiguousarray(inv.T, l.dtype))
                for l, inv in zip(self.layers, inverse)]

    def covariance(self, root: List[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """The marginal variances (P,): the blocks are never formed."""
        var = np.zeros(self.n_params)
        for layer, (inv, _) in zip(self.layers, root):
            # Σ_(o,j),(o,j) = Σ_ab V_oa² U_jb² / e_ab.
            var[layer.index] = ((layer.V ** 2) @ inv @ (layer.U ** 2).T).ravel()
        return var

    def functional_variance(self, root: List[Tuple[np.ndarray, np.ndarray]],
                            inputs: List[np.ndarray], adjoints: List[np.ndarray],
                            out: np.ndarray, scratch: List[Tuple[np.ndarray, ...]]) -> None:
        """out (M, K, K) += J Σ Jᵀ from each layer's rows: J_k of a layer is δ_k āᵀ (rank one),
        so with z_k = Vᵀ δ_k and ã = (Uᵀ ā)², (J Σ Jᵀ)_kk' = Σ_o z_ko z_k'o Σ_j ã_j / e_oj.
        `inputs[l]` (M, w) in the network's dtype, `adjoints[l]` (K, M, n_out) float64, or None
        for the outputs' own linear layer (δ_k = e_k); `scratch[l]` = buffers of `scratch()`,
        of at least M rows."""
        M, K = out.shape[:2]
        for layer, (_, inv_t), a, d, bufs in zip(self.layers, root, inputs, adjoints, scratch):
            aU, weights_net, weights, z, zw, part = (
                bufs[0][:M], bufs[1][:M], bufs[2][:M], bufs[3][:, :M], bufs[4][:, :M],
                bufs[5][:M])
            layer.rotate(a, out=aU)
            np.square(aU, out=aU)
            np.matmul(aU, inv_t, out=weights_net)  # Σ_j ã_j / e_oj
            weights[...] = weights_net
            if d is None:
                layer.output_variance(weights, part)
                out += part
                continue
            np.matmul(d, layer.V, out=z)
            np.einsum("kmo,mo->kmo", z, weights, out=zw)  # (a broadcasting ufunc would buffer)
            np.matmul(zw.transpose(1, 0, 2), z.transpose(1, 2, 0), out=part)
            out += part

    @staticmethod
    def scratch(layers: List["KronLayer"], M: int, K: int) -> List[Tuple[np.ndarray, ...]]:
        """The buffers `functional_variance` needs for M rows."""
        return [(np.empty((M, l.U.shape[0]), l.dtype), np.empty((M, l.V.shape[0]), l.dtype),
                 np.empty((M, l.V.shape[0])), np.empty((K, M, l.V.shape[0])),
                 np.empty((K, M, l.V.shape[0])), np.empty((M, K, K))) for l in layers]

    def sample(self, root: List[Tuple[np.ndarray, np.ndarray]], z: np.ndarray) -> np.ndarray:
        theta = np.zeros((z.shape[0], self.n_params))
        at = 0
        for layer, (inv, _) in zip(self.layers, root):
            n, w = inv.shape
            Z = z[:, at:at + n * w].reshape(-1, n, w) * np.sqrt(inv)
            theta[:, layer.index] = (layer.V @ Z @ layer.U.T).reshape(-1, n * w)
            at += n * w
        return theta


def kron_index(weight: int, bias: Optional[int], n_in: int, n_out: int) -> np.ndarray:
    """index[o * w + j] = the position in the parameters of element (o, j) of [W | b] (w = n_in,
    + 1 with a bias): the weight is stored row by row, the bias after it."""
    w = n_in + (bias is not None)
    index = np.empty((n_out, w), np.intp)
    index[:, :n_in] = weight + np.arange(n_out * n_in).reshape(n_out, n_in)
    if bias is not None:
        index[:, n_in] = bias + np.arange(n_out)
    return index.ravel()


def minimize(fg: Any, u: np.ndarray, iterations: int = 200, max_step: float = 4.0) -> np.ndarray:
    """A small BFGS with backtracking for the few log hyper-parameters of the marginal
    likelihood: `fg(u)` returns (f, ∇f); steps are capped at `max_step` per coordinate so exp()
    of them stays finite. The inverse Hessian's first estimate is scaled by the first step
    (Nocedal & Wright, eq. 6.20)."""
    f, g = fg(u)
    H = np.eye(u.size)
    for iteration in range(iterations):
        if np.abs(g).max() <= 1e-8 * (1.0 + abs(f)):
            break
        p = -H @ g
        if g @ p >= 0:  # not a descent direction: restart from the gradient
            H, p = np.eye(u.size), -g
        p *= min(1.0, max_step / np.abs(p).max())
        step = 1.0
        while True:
            un = u + step * p
            fn, gn = fg(un)
            if np.isfinite(fn) and fn <= f + 1e-4 * step * (g @ p):
                break
            step *= 0.5
            if step < 1e-12:
                return u
        s, y = un - u, gn - g
        if s @ y > 1e-12 * np.sqrt((s @ s) * (y @ y)):
            if iteration == 0:
                H *= (s @ y) / (y @ y)
            rho = 1.0 / (s @ y)
            I = np.eye(u.size)
            H = (I - rho * np.outer(s, y)) @ H @ (I - rho * np.outer(y, s)) + rho * np.outer(s, s)
        converged = np.abs(s).max() < 1e-12 or abs(f - fn) <= 1e-15 * (1.0 + abs(f))
        u, f, g = un, fn, gn
        if converged:
            break
    return u
