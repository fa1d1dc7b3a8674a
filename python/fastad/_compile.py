"""`spec` and `compile`: trace a Python function once and compile it into a replayable Program."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from . import _fastad
from ._tracer import Shape, Tracer

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Spec:
    """The shape and dtype of one argument. ``None`` as the first dimension is the batch axis:
    the compiled program then accepts any number of rows there."""

    shape: Shape
    dtype: Optional[np.dtype] = None


def spec(shape: Sequence[Optional[int]], dtype: Any = None) -> Spec:
    """Describes an argument of a function to compile, e.g. ``fa.spec((None, 3), np.float32)``.

    `dtype` ``None`` takes the program's dtype. Only the first dimension may be ``None``.
    """
    shape = tuple(shape)
    if len(shape) > 2:
        raise ValueError(f"fastad arrays have rank 0, 1 or 2; got shape {shape}")
    for i, d in enumerate(shape):
        if d is None and i != 0:
            raise ValueError(f"only the first dimension may be the batch axis (None); got shape {shape}")
        if d is not None and (not isinstance(d, (int, np.integer)) or d < 0):
            raise ValueError(f"dimensions must be non-negative integers or None; got shape {shape}")
    shape = tuple(None if d is None else int(d) for d in shape)
    return Spec(shape, None if dtype is None else np.dtype(dtype))


def _as_spec(x: Any, k: int) -> Spec:
    if isinstance(x, Spec):
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        return spec(x.shape, x.dtype if x.dtype.kind == "f" else None)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return spec((), None)
    if isinstance(x, (list, tuple)):
        return _as_spec(np.asarray(x), k)
    raise TypeError(f"argument {k}: expected an example array or fa.spec(shape, dtype), got {type(x).__name__}")


def _program_dtype(specs: Sequence[Spec], dtype: Any) -> np.dtype:
    if dtype is not None:
        d = np.dtype(dtype)
        if d not in _FLOATS:
            raise TypeError(f"dtype must be float32 or float64, got {d}")
        return d
    found = {s.dtype for s in specs if s.dtype is not None}
    bad = [d for d in found if d not in _FLOATS]
    if bad:
        raise TypeError(f"arguments must be float32 or float64, got {bad[0]}; pass dtype= to choose")
    if len(found) > 1:
        raise TypeError("the arguments mix float32 and float64; one dtype per program (pass dtype= to choose)")
    return found.pop() if found else np.dtype(np.float64)


def _arg_names(fn: Callable, n: int) -> list:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"arg{k}" for k in range(len(names), n)]


def compile(  # noqa: A001 - the natural name
    fn: Callable[..., Tracer],
    *specs: Any,
    wrt: Union[int, Tuple[int, ...]] = 0,
    dtype: Any = None,
) -> _fastad.Program:
    """Traces `fn` once and compiles it into a `Program` that replays without allocating.

    Each entry of `specs` describes one argument of `fn`: an example array (its shape and dtype)
    or ``fa.spec(shape, dtype)``, where ``None`` as the first dimension is the batch axis.
    `wrt` is the argument (int) or arguments (tuple) to differentiate with respect to; gradients
    come back as one array or as a tuple to match. `dtype` (float32 or float64) overrides the
    dtype the specs imply; the default is float64.

    The function is called once, with traced arrays: Python control flow runs at that time only
    and the compiled program is a fixed graph.

    >>> import numpy as np, fastad as fa
    >>> f = fa.compile(lambda x: fa.sum(x * x), fa.spec((3,)))
    >>> f.value_and_grad(np.array([1.0, 2.0, 3.0]))
    (14.0, array([2., 4., 6.]))
    """
    if not callable(fn):
        raise TypeError(f"fa.compile needs a function, got {type(fn).__name__}")
    specs_ = [_as_spec(s, k) for k, s in enumerate(specs)]
    n = len(specs_)
    wrt_tuple = isinstance(wrt, (tuple, list))
    wrt_list = list(wrt) if wrt_tuple else [wrt]
    for w in wrt_list:
        if not isinstance(w, (int, np.integer)) or isinstance(w, bool) or not -n <= w < n:
            raise ValueError(f"wrt={wrt!r} does not name an argument: the function is given {n} specs")
    wrt_list = [int(w) % n for w in wrt_list]

    d = _program_dtype(specs_, dtype)
    graph = _fastad.Graph()
    args = [Tracer(graph, graph.input(list(s.shape)), d) for s in specs_]
    out = fn(*args)
    if not isinstance(out, Tracer):
        raise TypeError(
            f"the function must return one traced array computed from its arguments; it returned "
            f"{type(out).__name__}"
        )
    if out._graph is not graph:
        raise ValueError("the function returned a traced array from another fa.compile call")
    return _fastad.Program(graph, out._id, wrt_list, d.name, _arg_names(fn, n), wrt_tuple)
