"""The functions a traced program is written with: elementwise functions, reductions, matmul,
softmax, and the common losses. On plain NumPy arrays the elementwise functions and reductions
compute with NumPy, so a function can be run untraced for checking."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._tracer import Tracer


def _np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def _np_softplus(x):
    x = np.asarray(x, dtype=float)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


_NUMPY_UNARY = {
    "exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1, "sqrt": np.sqrt,
    "abs": np.abs, "tanh": np.tanh, "sin": np.sin, "cos": np.cos, "square": np.square,
    "sigmoid": _np_sigmoid, "softplus": _np_softplus, "relu": lambda x: np.maximum(x, 0),
}


def _unary(name: str):
    def f(x: Any) -> Any:
        if isinstance(x, Tracer):
            return x._unary(name)
        return _NUMPY_UNARY[name](x)

    f.__name__ = name
    f.__qualname__ = name
    f.__doc__ = f"Elementwise {name}, traced inside fa.compile (NumPy's on plain arrays)."
    return f


exp = _unary("exp")
log = _unary("log")
log1p = _unary("log1p")
expm1 = _unary("expm1")
sqrt = _unary("sqrt")
abs = _unary("abs")  # noqa: A001 - mirrors numpy.abs
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
relu = _unary("relu")
softplus = _unary("softplus")
sin = _unary("sin")
cos = _unary("cos")
square = _unary("square")


def _tracer_of(*xs: Any) -> Optional[Tracer]:
    return next((x for x in xs if isinstance(x, Tracer)), None)


def _traced_only(name: str, *xs: Any) -> Tracer:
    t = _tracer_of(*xs)
    if t is None:
        raise TypeError(f"fa.{name} works on traced arrays, inside a function passed to fa.compile")
    return t


def maximum(a: Any, b: Any) -> Any:
    """Elementwise maximum (NaN-propagating); the gradient goes to `a` on ties."""
    t = _tracer_of(a, b)
    return np.maximum(a, b) if t is None else t._binary("maximum", a, b)


def minimum(a: Any, b: Any) -> Any:
    """Elementwise minimum (NaN-propagating); the gradient goes to `a` on ties."""
    t = _tracer_of(a, b)
    return np.minimum(a, b) if t is None else t._binary("minimum", a, b)


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` with NumPy's rules for rank-1 and rank-2 operands."""
    return a @ b


def sum(x: Any, axis: Optional[int] = None, keepdims: bool = False) -> Any:  # noqa: A001
    """Sum over all elements (``axis=None``) or one axis."""
    if isinstance(x, Tracer):
        return x.sum(axis, keepdims)
    return np.sum(x, axis=axis, keepdims=keepdims)


def mean(x: Any, axis: Optional[int] = None, keepdims: bool = False) -> Any:
    """Mean over all elements (``axis=None``) or one axis. The mean of nothing is NaN."""
    if isinstance(x, Tracer):
        return x.mean(axis, keepdims)
    return np.mean(x, axis=axis, keepdims=keepdims)


def logsumexp(x: Tracer, axis: Optional[int] = None, keepdims: bool = False) -> Tracer:
    """``log(sum(exp(x)))`` over all elements or one axis, computed without overflow."""
    t = _traced_only("logsumexp", x)
    return t._new(t._graph.reduce("logsumexp", t._id, axis, keepdims))


def softmax(x: Tracer, axis: Optional[int] = -1) -> Tracer:
    """Softmax along `axis` (the last by default; ``None`` for all elements)."""
    t = _traced_only("softmax", x)
    return t._new(t._graph.softmax(t._id, axis, False))


def log_softmax(x: Tracer, axis: Optional[int] = -1) -> Tracer:
    """Log-softmax along `axis`, computed without overflow."""
    t = _traced_only("log_softmax", x)
    return t._new(t._graph.softmax(t._id, axis, True))


def transpose(x: Tracer) -> Tracer:
    """The transpose of a matrix (vectors and scalars are returned as they are)."""
    return x.T


def reshape(x: Tracer, shape) -> Tracer:
    """The same elements in a new shape (the batch axis must stay a batch axis)."""
    return x.reshape(shape)


def take_along_rows(x: Tracer, index: Any) -> Tracer:
    """``x[i, index[i]]`` for each row i of the matrix `x`; `index` holds integer class labels."""
    t = _traced_only("take_along_rows", x, index)
    return t._new(t._graph.take_along_rows(t._lift(x), t._lift(index)))
