"""Losses: each is one object carrying its traced function and, for the generalised Gauss-Newton
matrix, its output-Hessian factor. Adding a loss means adding one `Loss` here.

A `Loss` is called like a function inside ``fa.compile`` (``fa.mse(pred, target)``); models take
it by name (``loss="mse"``) or as the object itself.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, Optional, Union

import numpy as np

from ._ops import log_softmax, mean, softplus, sum, take_along_rows, _traced_only
from ._tracer import Tracer

# The factor rows of a sample's output Hessian: given the outputs f (N, K) as float64 and the
# targets, yields K cotangents C_k (N, K), row b of C_k being row k of M_b, Λ_b = M_bᵀ M_b.
HessianFactor = Callable[[Callable[[], np.ndarray], Any, int, int], Iterator[np.ndarray]]


class Loss:
    """A loss of the outputs ``pred`` (N, K) and targets: its traced function, and (for the
    built-in ones) the factor of its Hessian with respect to one sample's outputs."""

    def __init__(self, name: str, fn: Callable[..., Tracer],
                 hessian_factor: Optional[HessianFactor] = None, doc: str = "",
                 targets: Optional[str] = None) -> None:
        self.name = name
        self.fn = fn
        self.hessian_factor = hessian_factor
        self.__doc__ = doc or fn.__doc__
        self.__name__ = name
        # What the built-in losses take as targets: "optional" (sse), "required" (one value per
        # output), "labels" (cross_entropy: class labels too); None for functions of one's own,
        # whose targets are theirs to check.
        self.targets = targets

    def __call__(self, pred: Tracer, *target: Any) -> Tracer:
        return self.fn(pred, *target)

    def check_targets(self, Y: Optional[np.ndarray], K: int) -> Optional[np.ndarray]:
        """`Y` (N rows, checked by the caller) as this loss takes it for a model of K outputs:
        (N, K), or labels (N,) for cross_entropy; (N,) for K = 1 becomes (N, 1). Raises a
        ValueError naming the shape otherwise, and for missing targets it needs."""
        if self.targets is None:
            return Y
        if Y is None:
            if self.targets == "optional":
                return None
            raise ValueError(f"loss {self.name!r} needs targets Y of shape (N, {K}): "
                             f"call with (X, Y)")
        if Y.ndim == 1 and self.targets == "labels":
            return Y
        if Y.ndim == 1 and K == 1:
            return Y.reshape(-1, 1)
        if Y.ndim != 2 or Y.shape[1] != K:
            labels = " or class labels (N,)" if self.targets == "labels" else ""
            raise ValueError(f"loss {self.name!r} needs targets Y of shape (N, {K}){labels} for "
                             f"a model with {K} outputs; got shape {Y.shape}")
        return Y

    def __repr__(self) -> str:
        return f"fa.{self.name}"


def unit_rows(n: int, K: int, k: int, scale: Any = 1.0, dtype: Any = np.float64) -> np.ndarray:
    """(n, K) zeros with column k set to `scale`: the cotangent that picks output k."""
    C = np.zeros((n, K), dtype)
    C[:, k] = scale
    return C


def _sse(pred: Tracer, target: Any = None) -> Tracer:
    """Sum of squared errors, ``sum((pred - target)**2)`` (or ``sum(pred**2)`` without target)."""
    r = pred if target is None else pred - target
    return sum(r * r)


def _mse(pred: Tracer, target: Any) -> Tracer:
    """Mean squared error over all elements, ``mean((pred - target)**2)``."""
    r = pred - target
    return mean(r * r)


def _cross_entropy(logits: Tracer, labels: Any) -> Tracer:
    """Mean softmax cross-entropy over the rows of `logits` (N, K).

    `labels` is either integer class indices of shape (N,) or probabilities of shape (N, K).
    """
    _traced_only("cross_entropy", logits, labels)
    ndim = labels.ndim if hasattr(labels, "ndim") else np.ndim(labels)
    logp = log_softmax(logits, axis=-1)
    if ndim == 1:
        return -mean(take_along_rows(logp, labels))
    if ndim == 2:
        return -mean(sum(labels * logp, axis=-1))
    raise ValueError(f"labels must have shape (N,) or (N, K); got rank {ndim}")


def _bce_logits(logits: Tracer, targets: Any) -> Tracer:
    """Mean binary cross-entropy of targets in [0, 1] given logits, computed without overflow:
    ``mean(softplus(z) - z * t)``."""
    return mean(softplus(logits) - logits * targets)


def _squares_factor(per_output: Callable[[int], float]) -> HessianFactor:
    """Λ = c·I: rows √c·e_k."""
    def factor(outputs, Y, n, K):
        root = math.sqrt(per_output(K))
        for k in range(K):
            yield unit_rows(n, K, k, root)
    return factor


def _bce_factor(outputs, Y, n, K):
    # Λ = diag(σ(1 − σ))/K: rows √(σ_k(1 − σ_k)/K)·e_k.
    s = 1.0 / (1.0 + np.exp(-outputs()))
    root = np.sqrt(s * (1.0 - s) / K)
    for k in range(K):
        yield unit_rows(n, K, k, root[:, k])


def _cross_entropy_factor(outputs, Y, n, K):
    # Λ = w (diag p − p pᵀ), w = Σ_k y_k (1 for labels); row k of M is √(w p_k) (e_k − p).
    f = outputs()
    p = np.exp(f - f.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    w = np.ones((n, 1)) if np.ndim(Y) == 1 else np.asarray(Y, np.float64).sum(1, keepdims=True)
    root = np.sqrt(w * p)
    for k in range(K):
        C = -p * root[:, k:k + 1]
        C[:, k] += root[:, k]
        yield C


sse = Loss("sse", _sse, _squares_factor(lambda K: 2.0), targets="optional")
mse = Loss("mse", _mse, _squares_factor(lambda K: 2.0 / K), targets="required")
cross_entropy = Loss("cross_entropy", _cross_entropy, _cross_entropy_factor, targets="labels")
bce_logits = Loss("bce_logits", _bce_logits, _bce_factor, targets="required")

LOSSES: Dict[str, Loss] = {l.name: l for l in (sse, mse, cross_entropy, bce_logits)}


def resolve(loss: Union[str, Loss, Callable[..., Any]]) -> Loss:
    """The `Loss` for a name, a `Loss`, or a traced function of one's own (no Hessian factor)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use a function or one of {sorted(LOSSES)}")
        return LOSSES[loss]
    if callable(loss):
        return Loss(getattr(loss, "__name__", "custom"), loss)
    raise TypeError(f"loss must be a name or a function, got {loss!r}")
