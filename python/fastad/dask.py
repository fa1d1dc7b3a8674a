"""fastad over Dask arrays: curvature, full-batch gradients and per-sample gradient norms of a
`Chain` for data chunked by rows, on one machine's threads or on a ``dask.distributed`` cluster.

Every sum here is a sum over samples, so each chunk of rows is reduced where it lies, by the
model's own methods on the worker, and the partial sums are added by a Dask tree reduction:
a worker holds one chunk and a few partial sums (each the size of the result, P² for a full
Fisher) whatever N is. The model reaches the workers once per computation, pickled as a model
file is written (its JSON description and its parameters); the workers compile their own
programs. Install with ``pip install fastad[dask]``::

    import dask.array as da, fastad.dask
    X = da.from_zarr(...)                       # (N, in_features), chunked by rows
    F = fastad.dask.fisher(model, X, Y, loss="mse", kind="ggn")     # NumPy (P, P)

With a ``dask.distributed.Client`` in the session the work runs on its cluster; otherwise on
Dask's default scheduler. The results equal the single-process methods' up to the order of
the sums: partial sums are added in float64, then given the model's dtype.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as e:  # pragma: no cover - exercised only without Dask
    raise ImportError("fastad.dask needs Dask: pip install 'fastad[dask]' (or dask[array] "
                      "and, for clusters, distributed)") from e

from ._chain import Chain
from ._curvature import _check_labels, kron_shapes
from ._losses import LOSSES, resolve

__all__ = ["fisher", "value_and_grad", "per_sample_grad_norms"]

# Partial sums added at once by each step of the tree reduction: the memory of a step is this
# many results (P² each for a full Fisher).
SPLIT_EVERY = 4

# The losses that are means over samples (the others are sums); a mean's partials are weighted
# by their rows.
_MEAN_LOSSES = ("mse", "cross_entropy", "bce_logits")


def fisher(model: Chain, X: Any, Y: Any = None, *, loss: Any = "sse", kind: str = "empirical",
           structure: str = "full", split_every: int = SPLIT_EVERY) -> Any:
    """``model.fisher(X, Y, loss=, kind=, structure=)`` for Dask arrays X (N, in_features) and Y
    (N, K) or labels (N,) (Y may also be a NumPy array): each chunk of rows on a worker, the
    partial sums added by a tree reduction of `split_every` at a time. Returns what
    `Chain.fisher` returns: (P, P) for "full", (P,) for "diag", the pair of lists (A, G) of
    Kronecker factors for "kron", as NumPy arrays of the model's dtype."""
    X, Y, squeeze = _prepared(model, X, Y, loss)
    if structure not in ("full", "diag", "kron"):
        raise ValueError(f'structure must be "full", "diag" or "kron", got {structure!r}')
    if kind not in ("empirical", "ggn"):
        raise ValueError(f'kind must be "empirical" or "ggn", got {kind!r}')
    p = model.n_params
    shapes = {"full": [(p, p)], "diag": [(p,)], "kron": _kron_shapes(model)}[structure]
    part = functools.partial(_fisher_part, loss=loss, kind=kind, structure=structure)
    _, total = _summed(model, X, Y, squeeze, part, _size(shapes), split_every, loss,
                       model.out_features)
    return _grouped(_split(total, shapes, model.dtype), structure == "kron")


def value_and_grad(model: Chain, X: Any, Y: Any = None, *, loss: Any = "sse", l2: float = 0.0,
                   reduction: Optional[str] = None,
                   split_every: int = SPLIT_EVERY) -> Tuple[float, np.ndarray]:
    """The full-batch ``model.value_and_grad(X, Y, loss=, l2=)`` for Dask arrays: the loss over
    all N rows and its gradient (P,), from each chunk's partial value and gradient. The
    built-in losses are combined exactly: "sse" is a sum, the others means (their partials are
    weighted by their rows). For a loss function of one's own, say which it is with
    ``reduction="sum"`` or ``"mean"`` (a mean over samples). The ½·l2²·‖θ‖² penalty is added
    once."""
    X, Y, squeeze = _prepared(model, X, Y, loss)
    reduction = _reduction(loss, reduction)
    part = functools.partial(_value_and_grad_part, loss=loss, mean=reduction == "mean")
    rows, total = _summed(model, X, Y, squeeze, part, 1 + model.n_params, split_every, loss,
                          model.out_features)
    scale = 1.0 / rows if reduction == "mean" and rows else 1.0
    value, grad = total[0] * scale, total[1:] * scale
    if l2:
        theta = model.params.astype(np.float64)
        l2 = float(l2)
        value += 0.5 * l2 * l2 * float(theta @ theta)
        grad += l2 * l2 * theta
    return float(value), grad.astype(model.dtype)


def per_sample_grad_norms(model: Chain, X: Any, Y: Any = None, *, loss: Any = "sse") -> Any:
    """``model.per_sample_grad_norms(X, Y, loss=)`` as a Dask array (N,) of the model's dtype,
    chunked as X's rows, computed when you compute it (each chunk on a worker)."""
    X, Y, squeeze = _prepared(model, X, Y, loss)
    args = (X,) if Y is None else (X, Y)
    return da.map_blocks(_norms_part, *args, model=_shipped(model), loss=loss, squeeze=squeeze,
                         K=model.out_features, drop_axis=1, dtype=model.dtype,
                         meta=np.empty((0,), model.dtype))


# What each chunk computes, on the worker. `out` is the chunk's float64 partial sum ----------


def _fisher_part(model: Chain, X: np.ndarray, Y: Any, out: np.ndarray, *, loss: Any, kind: str,
                 structure: str) -> None:
    result = model.fisher(X, Y, loss=loss, kind=kind, structure=structure)
    _flatten_into(result[0] + result[1] if structure == "kron" else [result], out)


def _value_and_grad_part(model: Chain, X: np.ndarray, Y: Any, out: np.ndarray, *, loss: Any,
                         mean: bool) -> None:
    value, grad = model.value_and_grad(X, Y, loss=loss)
    weight = X.shape[0] if mean else 1.0  # a mean's partial counts its rows
    out[0] = value * weight
    np.multiply(grad, weight, out=out[1:])


def _norms_part(X: np.ndarray, Y: Any = None, *, model: Chain, loss: Any, squeeze: bool,
                K: int, block_info: Any = None) -> np.ndarray:
    Y = _chunk_targets(Y, squeeze, loss, K, block_info)
    return model.per_sample_grad_norms(X, Y, loss=loss)


def _partial_sum(X: np.ndarray, Y: Any = None, *, model: Any, part: Callable[..., None],
                 size: int, squeeze: bool, loss: Any, K: int,
                 block_info: Any = None) -> np.ndarray:
    """One chunk's row of the partials: [its rows, its partial sum (size)], float64."""
    Y = _chunk_targets(Y, squeeze, loss, K, block_info)
    out = np.zeros((1, 1 + size))
    out[0, 0] = X.shape[0]
    if X.shape[0]:
        part(model, X, Y, out[0, 1:])
    return out


def _chunk_targets(Y: Any, squeeze: bool, loss: Any, K: int, block_info: Any) -> Any:
    """A chunk's targets as the model's methods take them (labels back to (rows,)), labels of
    K classes checked here so that an error names the row of the whole array."""
    if Y is None or not squeeze:
        return Y
    Y = Y[:, 0]
    if resolve(loss).targets == "labels":
        _check_labels(Y, K, first_row=_first_row(block_info))
    return Y


def _first_row(block_info: Any) -> int:
    try:
        start = block_info[0]["array-location"][0][0]
        return int(start) if start == start else 0  # unknown chunk sizes: nan
    except (TypeError, KeyError, IndexError):
        return 0


def _laplace_sums(sums: Any, X: Any, Y: Any, out: Any) -> Tuple[int, float]:
    """`Laplace.fit` over Dask arrays: adds the curvature of all rows to `out` (zeroed arrays:
    the matrix, its diagonal, or the Kronecker factors' (A, G) lists) by each chunk's
    ``sums.add`` (a `_laplace._DataSums`) on a worker; returns N and the data term."""
    X, Y, squeeze = _prepared(sums.model, X, Y, sums.loss)
    kron = not isinstance(out, np.ndarray)
    arrays = list(out[0]) + list(out[1]) if kron else [out]
    shapes = [a.shape for a in arrays]
    part = functools.partial(_laplace_part, shapes=shapes, dtype=arrays[0].dtype, kron=kron)
    n, total = _summed(sums, X, Y, squeeze, part, 1 + _size(shapes), SPLIT_EVERY, sums.loss,
                       sums.model.out_features)
    for a, b in zip(arrays, _split(total[1:], shapes, arrays[0].dtype)):
        a += b
    return n, float(total[0])


def _laplace_part(sums: Any, X: np.ndarray, Y: Any, out: np.ndarray, *,
                  shapes: List[Tuple[int, ...]], dtype: Any, kron: bool) -> None:
    arrays = [np.zeros(s, dtype) for s in shapes]
    out[0] = sums.add(X, Y, _grouped(arrays, kron))
    _flatten_into(arrays, out[1:])


# The reduction ------------------------------------------------------------------------------


def _summed(model: Any, X: Any, Y: Any, squeeze: bool, part: Callable[..., None], size: int,
            split_every: int, loss: Any, K: int) -> Tuple[int, np.ndarray]:
    """(N, Σ over X's chunks of `part(model, X, Y, out)`'s float64 partials out (size,)), by a
    tree reduction; `model` (anything picklable) is shipped once. Y's labels of K classes are
    checked chunk by chunk."""
    if not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every must be an integer of at least 2, got {split_every!r}")
    blocks = X.numblocks[0]
    args = (X,) if Y is None else (X, Y)
    partials = da.map_blocks(
        _partial_sum, *args, model=_shipped(model), part=part, size=size, squeeze=squeeze,
        loss=loss, K=K, chunks=((1,) * blocks, (1 + size,)), dtype=np.float64,
        meta=np.empty((0, 0), np.float64))
    total = partials.sum(axis=0, split_every=split_every).compute()
    return int(round(total[0])), total[1:]


def _shipped(obj: Any) -> Any:
    """`obj` as one key of the graph: sent to each worker once per computation, not once per
    task. The key is new each time (not a hash of `obj`), so a model whose parameters changed
    since the last computation is never mistaken for its earlier self."""
    return dask.delayed(obj, pure=False, traverse=False)


def _prepared(model: Any, X: Any, Y: Any, loss: Any) -> Tuple[Any, Any, bool]:
    """X and Y as Dask arrays of the same row chunks and one column chunk, checked against the
    model and the loss before anything runs; Y of labels (N,) as (N, 1) (squeeze: True)."""
    if not isinstance(model, Chain):
        raise TypeError(f"fastad.dask takes a fa.Chain, got {type(model).__name__}")
    K = model.out_features
    X = _dask_array(X, "X")
    model._check_x_shape(X.shape)
    if X.numblocks[1] > 1:
        X = X.rechunk({1: -1})
    if Y is None:
        resolve(loss).check_targets(None, K)  # raises when the loss needs targets
        return X, None, False
    Y = _dask_array(Y, "Y")
    model._check_y_rows(Y.shape, X.shape[0])
    # The loss's check of Y's shape, on a stand-in of that shape that holds no memory.
    rows = Y.shape[0] if Y.shape[0] == Y.shape[0] else 0  # NaN: not known yet
    resolve(loss).check_targets(np.broadcast_to(np.zeros(()), (rows,) + Y.shape[1:]), K)
    squeeze = Y.ndim == 1
    if squeeze:
        Y = Y[:, None]
    if Y.chunks[0] != X.chunks[0]:
        if any(c != c for c in X.chunks[0] + Y.chunks[0]):
            raise ValueError("X or Y has unknown chunk sizes along its rows, and their chunks "
                             "differ: call X.compute_chunk_sizes() (and Y's) first")
        Y = Y.rechunk({0: X.chunks[0]})
    if Y.numblocks[1] > 1:
        Y = Y.rechunk({1: -1})
    return X, Y, squeeze


def _dask_array(a: Any, name: str) -> Any:
    """`a` as a Dask array: itself, or a NumPy array wrapped whole (rechunked later)."""
    if isinstance(a, da.Array):
        return a
    if hasattr(a, "__dask_graph__"):
        raise TypeError(f"{name} must be a Dask array (or a NumPy array), got "
                        f"{type(a).__name__}; for a Dask DataFrame use .to_dask_array(lengths=True)")
    a = np.asarray(a)
    return da.from_array(a, chunks=a.shape)


def _reduction(loss: Any, reduction: Optional[str]) -> str:
    """"sum" or "mean": how a loss's partials over chunks combine."""
    obj = resolve(loss)
    name, builtin = obj.name, None
    if obj is LOSSES.get(name):
        builtin = "mean" if name in _MEAN_LOSSES else "sum"
    if reduction not in (None, "sum", "mean"):
        raise ValueError(f'reduction must be "sum" or "mean", got {reduction!r}')
    if builtin is None:
        if reduction is None:
            raise ValueError(f"loss {name!r} is a function of your own: say how it combines "
                             f"over samples with reduction='sum' or reduction='mean'")
        return reduction
    if reduction not in (None, builtin):
        raise ValueError(f"loss {name!r} is a {builtin}; reduction={reduction!r} contradicts it")
    return builtin


# Results as one float64 vector, and back ---------------------------------------------------


def _kron_shapes(model: Chain) -> List[Tuple[int, int]]:
    """The Kronecker factors' shapes, A_l then G_l, of `Chain.fisher(structure="kron")`: those
    of `kron_shapes` for the model's layers, read from them without compiling a program."""
    A, G = kron_shapes([(None, True if l.use_bias else None, l.in_features, l.out_features)
                        for l in model.layers])
    return A + G


def _grouped(arrays: List[np.ndarray], kron: bool) -> Any:
    """A flat list of results as the curvature methods give and take them: the (A, G) lists
    of Kronecker factors (A_l first, then G_l), or the one array."""
    half = len(arrays) // 2
    return (arrays[:half], arrays[half:]) if kron else arrays[0]


def _size(shapes: List[Tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for s in shapes)


def _flatten_into(arrays: List[np.ndarray], out: np.ndarray) -> None:
    at = 0
    for a in arrays:
        out[at:at + a.size] = a.ravel()
        at += a.size


def _split(total: np.ndarray, shapes: List[Tuple[int, ...]], dtype: Any) -> List[np.ndarray]:
    arrays, at = [], 0
    for s in shapes:
        size = int(np.prod(s))
        arrays.append(total[at:at + size].reshape(s).astype(dtype))
        at += size
    return arrays
