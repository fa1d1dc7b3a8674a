"""`Dense`: a fully connected layer whose weight and bias are views into its Chain's flat
parameter vector."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from ._activations import ACTIVATIONS
from ._tracer import Tracer

Activation = Union[None, str, Callable[[Any], Any]]


def _flat(p: Any, start: int, shape: Tuple[int, ...]) -> Any:
    """Elements start .. start + prod(shape) of the flat vector `p`, in `shape`."""
    if isinstance(p, Tracer):
        return p.flat_slice(start, shape)
    return np.asarray(p)[start:start + math.prod(shape)].reshape(shape)


class Dense:
    """A fully connected layer ``activation(X @ weight.T + bias)``, with weight of shape
    (out_features, in_features), as in PyTorch and Flux.

    `activation` is None (identity), one of "relu", "tanh", "sigmoid", "softplus", "gelu", or a
    function of a traced array (e.g. ``fa.sin``). Pass `weight` (and `bias`) arrays to start from
    given values; otherwise the `Chain` initialises the layer. Once in a Chain, ``layer.weight``
    and ``layer.bias`` are writable views into ``chain.params``.
    """

    def __init__(self, in_features: int, out_features: int, activation: Activation = None, *,
                 weight: Any = None, bias: Any = None, use_bias: bool = True) -> None:
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Dense: {name} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(
                    f"Dense: unknown activation {activation!r}; use None, a function, or one of "
                    f"{sorted(ACTIVATIONS)}"
                )
            self._act = ACTIVATIONS[activation]
        elif activation is None or callable(activation):
            self._act = activation
        else:
            raise TypeError(f"Dense: activation must be None, a name or a function, got {activation!r}")
        self.activation = activation
        self.use_bias = bool(use_bias)
        if bias is not None and not self.use_bias:
            raise ValueError("Dense: bias given but use_bias=False")
        self._initial = (self._checked(weight, (self.out_features, self.in_features), "weight"),
                         self._checked(bias, (self.out_features,), "bias"))
        self.weight: Optional[np.ndarray] = None
        self.bias: Optional[np.ndarray] = None
        self._offset: Optional[int] = None

    @staticmethod
    def _checked(a: Any, shape: Tuple[int, ...], name: str) -> Optional[np.ndarray]:
        if a is None:
            return None
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"Dense: {name} must be a real array, got dtype {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"Dense: {name} must have shape {shape}, got {a.shape}")
        return a

    @property
    def n_params(self) -> int:
        return self.out_features * (self.in_features + self.use_bias)

    def _bind(self, params: np.ndarray, offset: int, rng: np.random.Generator, init: str) -> None:
        """Makes weight and bias views of params[offset:] and initialises them (Chain checked
        that the layer is not bound yet)."""
        o, i = self.out_features, self.in_features
        self._offset = offset
        self.weight = params[offset:offset + o * i].reshape(o, i)
        if self.use_bias:
            self.bias = params[offset + o * i:offset + o * (i + 1)]
        w0, b0 = self._initial
        if w0 is not None:
            self.weight[...] = w0
        elif init == "pytorch":  # kaiming_uniform(a=√5): U(±1/√in)
            self.weight[...] = rng.uniform(-1.0, 1.0, (o, i)) / math.sqrt(i)
        else:  # Flux's glorot_uniform
            self.weight[...] = rng.uniform(-1.0, 1.0, (o, i)) * math.sqrt(6.0 / (i + o))
        if self.bias is not None:
            if b0 is not None:
                self.bias[...] = b0
            elif init == "pytorch":
                self.bias[...] = rng.uniform(-1.0, 1.0, o) / math.sqrt(i)
            else:
                self.bias[...] = 0.0
        self._initial = (None, None)  # the values live in params now

    def apply(self, p: Any, x: Any) -> Any:
        """The layer on `x` (N, in) with parameters read from the flat vector `p` (traced or NumPy)."""
        if self._offset is None:
            raise ValueError("a Dense layer gets its parameters from a Chain; wrap it: fa.Chain(layer)")
        o, i = self.out_features, self.in_features
        z = x @ _flat(p, self._offset, (o, i)).T
        if self.use_bias:
            z = z + _flat(p, self._offset + o * i, (o,))
        return z if self._act is None else self._act(z)

    def __repr__(self) -> str:
        act = "" if self.activation is None else f", {getattr(self.activation, '__name__', self.activation)}"
        return f"Dense({self.in_features} => {self.out_features}{act})"
