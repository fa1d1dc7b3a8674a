"""Traced arrays: stand-ins for NumPy arrays that record every operation into a graph.

A function is traced once, with a `Tracer` for each argument; the graph it records is what
`fastad.compile` compiles. Python control flow runs at trace time only, so a traced value cannot
decide an `if`: that raises a `TypeError` explaining why.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple

import numpy as np

from . import _fastad

Shape = Tuple[Optional[int], ...]

_FIXED_GRAPH = (
    "fastad traces a fixed graph: a traced array has no value while tracing, so it cannot "
    "decide a Python `if`, `while`, `and`/`or`, a comparison (==, <, ...), `in` or bool(). "
    "Write the function "
    "without branching on traced values (e.g. with fa.maximum, fa.minimum, fa.relu)."
)


class Tracer:
    """A symbolic array inside a function being traced by `fastad.compile`.

    Supports ``+ - * / ** @``, unary ``-``, ``abs()``, ``.T``, ``.sum()``, ``.mean()`` and
    ``.reshape()``, with NumPy broadcasting; shapes may contain ``None``, the batch axis.
    """

    __slots__ = ("_graph", "_id", "shape", "dtype")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy ufuncs on traced arrays (``ndarray * tracer``, ``np.exp(tracer)``) record nodes."""
        op = _UFUNCS.get(ufunc.__name__) if method == "__call__" and not kwargs else None
        if op is None:
            raise TypeError(
                f"numpy.{ufunc.__name__} cannot be traced; use fastad functions (fa.exp, fa.sum, ...) "
                "inside a function passed to fa.compile"
            )
        return op(*inputs)

    def __init__(self, graph: _fastad.Graph, node: int, dtype: np.dtype):
        self._graph = graph
        self._id = node
        self.shape: Shape = tuple(graph.shape(node))
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def T(self) -> "Tracer":
        return self._new(self._graph.transpose(self._id))

    def __repr__(self) -> str:
        return f"Tracer(shape={self.shape}, dtype={self.dtype})"

    def _new(self, node: int) -> "Tracer":
        return Tracer(self._graph, node, self.dtype)

    def _lift(self, x: Any) -> int:
        """The node id of an operand: a tracer of this graph, a number, or a constant array."""
        if isinstance(x, Tracer):
            if x._graph is not self._graph:
                raise ValueError("traced arrays from two different fa.compile calls cannot be combined")
            return x._id
        if isinstance(x, (numbers.Real, np.integer, np.floating)) and not isinstance(x, bool):
            return self._graph.constant(float(x))
        if isinstance(x, (np.ndarray, list, tuple)):
            arr = np.asarray(x)
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"a constant array must be real-valued, got dtype {arr.dtype}")
            if arr.ndim == 0:
                return self._graph.constant(float(arr))
            return self._graph.constant_array(np.ascontiguousarray(arr, dtype=np.float64))
        raise TypeError(f"cannot use an object of type {type(x).__name__} in a traced computation")

    def _binary(self, name: str, a: Any, b: Any) -> "Tracer":
        return self._new(self._graph.binary(name, self._lift(a), self._lift(b)))

    def _unary(self, name: str, p: float = 0.0) -> "Tracer":
        return self._new(self._graph.unary(name, self._id, p))

    def __add__(self, o): return self._binary("add", self, o)
    def __radd__(self, o): return self._binary("add", o, self)
    def __sub__(self, o): return self._binary("sub", self, o)
    def __rsub__(self, o): return self._binary("sub", o, self)
    def __mul__(self, o): return self._binary("mul", self, o)
    def __rmul__(self, o): return self._binary("mul", o, self)
    def __truediv__(self, o): return self._binary("div", self, o)
    def __rtruediv__(self, o): return self._binary("div", o, self)
    def __matmul__(self, o): return self._new(self._graph.matmul(self._id, self._lift(o)))
    def __rmatmul__(self, o): return self._new(self._graph.matmul(self._lift(o), self._id))
    def __neg__(self): return self._unary("neg")
    def __pos__(self): return self
    def __abs__(self): return self._unary("abs")

    def __pow__(self, p):
        if isinstance(p, Tracer):
            return self._binary("pow", self, p)
        if isinstance(p, (numbers.Real, np.integer, np.floating)) and not isinstance(p, bool):
            p = float(p)
            if p == 1.0:
                return self
            return self._unary("square") if p == 2.0 else self._unary("pow", p)
        return self._binary("pow", self, p)

    def __rpow__(self, base):
        return self._binary("pow", base, self)

    def sum(self, axis: Optional[int] = None, keepdims: bool = False, **numpy_kwargs) -> "Tracer":
        """Sum over all elements or one axis (``np.sum(tracer)`` calls this too)."""
        return self._reduce("sum", axis, keepdims, numpy_kwargs)

    def mean(self, axis: Optional[int] = None, keepdims: bool = False, **numpy_kwargs) -> "Tracer":
        """Mean over all elements or one axis (``np.mean(tracer)`` calls this too)."""
        return self._reduce("mean", axis, keepdims, numpy_kwargs)

    def _reduce(self, name: str, axis, keepdims, numpy_kwargs) -> "Tracer":
        extra = {k: v for k, v in numpy_kwargs.items() if v is not None and k != "dtype"}
        if extra:
            raise TypeError(f"{name}() of a traced array does not take {', '.join(extra)}")
        return self._new(self._graph.reduce(name, self._id, axis, keepdims))

    def reshape(self, *shape) -> "Tracer":
        """The same elements in a new shape, as NumPy's: ``None`` stands for the batch axis and
        one ``-1`` for the dimension the others leave."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self._new(self._graph.reshape(self._id, _resolve_reshape(self.shape, shape)))

    def __getitem__(self, index) -> "Tracer":
        """``x[a:b]`` of a fixed-length 1-D traced array (step 1): a contiguous slice."""
        if self.ndim != 1 or self.shape[0] is None or not isinstance(index, slice):
            raise TypeError(
                f"traced arrays support only x[a:b] on fixed-length 1-D arrays; got index {index!r} "
                f"of an array of shape {self.shape}"
            )
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            raise TypeError(f"traced slices need step 1, got {index!r}")
        return self.flat_slice(start, (max(stop - start, 0),))

    def flat_slice(self, start: int, shape) -> "Tracer":
        """Elements ``start .. start + prod(shape)`` of this fixed-shape array, as an array of
        `shape` (how a model reads each layer's weights from its flat parameter vector)."""
        return self._new(self._graph.slice(self._id, int(start), list(shape)))

    # A traced value cannot steer Python control flow.
    def __bool__(self): raise TypeError(_FIXED_GRAPH)
    def __eq__(self, o): raise TypeError(_FIXED_GRAPH)
    def __ne__(self, o): raise TypeError(_FIXED_GRAPH)
    def __contains__(self, o): raise TypeError(_FIXED_GRAPH)
    def __lt__(self, o): raise TypeError(_FIXED_GRAPH)
    def __le__(self, o): raise TypeError(_FIXED_GRAPH)
    def __gt__(self, o): raise TypeError(_FIXED_GRAPH)
    def __ge__(self, o): raise TypeError(_FIXED_GRAPH)
    def __float__(self): raise TypeError(_FIXED_GRAPH)
    def __int__(self): raise TypeError(_FIXED_GRAPH)
    def __index__(self): raise TypeError(_FIXED_GRAPH)

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "a traced array has no values while tracing; use fastad functions (fa.exp, fa.sum, ...) "
            "instead of NumPy functions such as np.sum inside a function passed to fa.compile"
        )

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a traced scalar")
        if self.shape[0] is None:
            raise TypeError("len() of a traced array along its batch axis is not known while tracing")
        return self.shape[0]

    def __iter__(self):
        raise TypeError("iterating over a traced array is not supported: fastad programs are whole-array")

    __hash__ = object.__hash__


def _resolve_reshape(old: Shape, shape) -> list:
    """`shape` for `reshape` with its one -1 (if any) resolved from `old`'s elements; each entry
    an int ≥ 0, None (the batch axis) or -1, checked here so nothing wraps in the core."""
    dims = []
    for d in shape:
        if d is None:
            dims.append(None)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and int(d) >= -1:
            dims.append(int(d))
        else:
            raise TypeError(
                f"reshape takes ints ≥ 0, one -1 or None (the batch axis); got {d!r} in {tuple(shape)}"
            )
    if dims.count(-1) > 1:
        raise ValueError(f"reshape can infer only one dimension (-1); got {tuple(shape)}")
    if -1 in dims:
        fixed = [d for d in old if d is not None]
        known = [d for d in dims if d is not None and d != -1]
        total, rest = int(np.prod(fixed, dtype=object)), int(np.prod(known, dtype=object))
        if rest == 0 or total % rest:
            raise ValueError(f"cannot reshape an array of shape {old} into shape {tuple(shape)}")
        dims[dims.index(-1)] = total // rest
    return dims


def _ufunc_unary(name):
    return lambda x: x._unary(name)


_UFUNCS = {
    "add": lambda a, b: a + b if isinstance(a, Tracer) else b.__radd__(a),
    "subtract": lambda a, b: a - b if isinstance(a, Tracer) else b.__rsub__(a),
    "multiply": lambda a, b: a * b if isinstance(a, Tracer) else b.__rmul__(a),
    "divide": lambda a, b: a / b if isinstance(a, Tracer) else b.__rtruediv__(a),
    "true_divide": lambda a, b: a / b if isinstance(a, Tracer) else b.__rtruediv__(a),
    "power": lambda a, b: a**b if isinstance(a, Tracer) else b.__rpow__(a),
    "matmul": lambda a, b: a @ b if isinstance(a, Tracer) else b.__rmatmul__(a),
    "maximum": lambda a, b: (a if isinstance(a, Tracer) else b)._binary("maximum", a, b),
    "minimum": lambda a, b: (a if isinstance(a, Tracer) else b)._binary("minimum", a, b),
    "negative": lambda x: -x,
    "absolute": lambda x: abs(x),
    "square": _ufunc_unary("square"),
    **{n: _ufunc_unary(n) for n in ("exp", "log", "log1p", "expm1", "sqrt", "tanh", "sin", "cos")},
}
