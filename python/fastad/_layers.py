"""Dense layers and chains of them: sugar over the compiled tape.

A `Chain` owns one flat parameter vector, ``model.params``; each layer's weight (out, in) and
bias (out,) are views into it. ``model.apply(p, X)`` emits the network's graph nodes, so a model
composes with user code inside ``fa.compile``; the convenience methods (``model(X)``,
``value_and_grad``, ``vjp``) compile the programs they need on first use and replay them after.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from . import _ops
from ._compile import compile, spec
from ._tracer import Tracer

Activation = Union[None, str, Callable[[Any], Any]]
Loss = Union[str, Callable[..., Any]]


def gelu(x: Any) -> Any:
    """GELU, tanh form (JAX's default): ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``."""
    return 0.5 * x * (1.0 + _ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


_ACTIVATIONS: Dict[str, Optional[Callable[[Any], Any]]] = {
    "identity": None,
    "linear": None,
    "relu": _ops.relu,
    "tanh": _ops.tanh,
    "sigmoid": _ops.sigmoid,
    "softplus": _ops.softplus,
    "gelu": gelu,
}

_LOSSES: Dict[str, Callable[..., Any]] = {
    "sse": _ops.sse,
    "mse": _ops.mse,
    "cross_entropy": _ops.cross_entropy,
    "bce_logits": _ops.bce_logits,
}

_INITS = ("pytorch", "glorot")


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
            if activation not in _ACTIVATIONS:
                raise ValueError(
                    f"Dense: unknown activation {activation!r}; use None, a function, or one of "
                    f"{sorted(_ACTIVATIONS)}"
                )
            self._act = _ACTIVATIONS[activation]
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


class Chain:
    """Layers applied in sequence, with all parameters in one flat vector ``params`` (P,).

    ``fa.Chain(fa.Dense(1, 1000), fa.Dense(1000, 20), fa.Dense(20, 1), dtype=np.float64, seed=0)``.
    `init` is "pytorch" (weights and biases U(±1/√fan_in), the default) or "glorot" (Flux:
    Glorot-uniform weights, zero biases); layers given `weight=`/`bias=` keep those values.
    Inputs X have shape (N, in_features), one sample per row.
    """

    def __init__(self, *layers: Dense, dtype: Any = np.float64, seed: Optional[int] = None,
                 init: str = "pytorch") -> None:
        if not layers:
            raise ValueError("Chain needs at least one layer")
        for k, layer in enumerate(layers):
            if not isinstance(layer, Dense):
                raise TypeError(f"Chain: layer {k} is a {type(layer).__name__}, not a fa.Dense")
            # Checked before any layer is bound, so a refused Chain leaves its layers usable.
            if layer._offset is not None or any(layer is l for l in layers[:k]):
                raise ValueError(
                    f"Chain: layer {k} ({layer!r}) already belongs to a Chain; create a new layer"
                )
        for k in range(1, len(layers)):
            if layers[k].in_features != layers[k - 1].out_features:
                raise ValueError(
                    f"Chain: layer {k} ({layers[k]!r}) takes {layers[k].in_features} inputs but "
                    f"layer {k - 1} ({layers[k - 1]!r}) gives {layers[k - 1].out_features}"
                )
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"Chain: dtype must be float32 or float64, got {self.dtype}")
        if init not in _INITS:
            raise ValueError(f"Chain: init must be one of {_INITS}, got {init!r}")
        self.layers: Tuple[Dense, ...] = tuple(layers)
        self._params = np.zeros(sum(l.n_params for l in layers), self.dtype)
        rng = np.random.default_rng(seed)
        offset = 0
        for layer in layers:
            layer._bind(self._params, offset, rng, init)
            offset += layer.n_params
        self._programs: Dict[Any, Any] = {}

    # Parameters ---------------------------------------------------------------------------------

    @property
    def params(self) -> np.ndarray:
        """All parameters, flat (P,): layer by layer, each weight (row-major) then bias."""
        return self._params

    @params.setter
    def params(self, value: Any) -> None:
        value = np.asarray(value)
        if value.shape != self._params.shape:
            raise ValueError(f"params must have shape {self._params.shape}, got {value.shape}")
        np.copyto(self._params, value, casting="same_kind")

    @property
    def n_params(self) -> int:
        return self._params.size

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    def __repr__(self) -> str:
        inner = ", ".join(repr(l) for l in self.layers)
        return f"Chain({inner}; {self.n_params} params, {self.dtype.name})"

    # The graph ----------------------------------------------------------------------------------

    def apply(self, p: Any, X: Any) -> Any:
        """The network on `X` (N, in_features) with parameters `p` (P,): traced arrays inside
        ``fa.compile`` (so a model composes with your own code), or NumPy arrays."""
        h = X
        for layer in self.layers:
            h = layer.apply(p, h)
        return h

    # Compiled conveniences ----------------------------------------------------------------------

    def _x(self, X: Any) -> np.ndarray:
        if not isinstance(X, np.ndarray):
            X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.in_features:
            raise ValueError(
                f"X must have shape (N, {self.in_features}) (one sample per row); got {X.shape}"
            )
        return X

    def _program(self, key: Any, build: Callable[[], Any]) -> Any:
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = build()
        return prog

    def _x_spec(self):
        return spec((None, self.in_features), self.dtype)

    def __call__(self, X: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The outputs (N, out_features), written into `out` when given."""
        X = self._x(X)
        prog = self._program("forward", lambda: compile(
            self.apply, spec((self.n_params,), self.dtype), self._x_spec(), dtype=self.dtype))
        return prog(self._params, X, out=out)

    def _loss_program(self, loss: Loss, Y: Any, l2: float):
        if isinstance(loss, str):
            if loss not in _LOSSES:
                raise ValueError(f"unknown loss {loss!r}; use a function or one of {sorted(_LOSSES)}")
            loss_fn = _LOSSES[loss]
        elif callable(loss):
            loss_fn = loss
        else:
            raise TypeError(f"loss must be a name or a function, got {loss!r}")
        l2 = float(l2)
        if Y is None:
            y_key = None
        else:
            if Y.ndim == 1 and isinstance(loss, str) and loss != "cross_entropy":
                raise ValueError(
                    f"targets Y of shape {Y.shape} look like class labels, which only "
                    f"cross_entropy takes; {loss} needs Y of shape (N, {self.out_features})"
                )
            y_key = (Y.ndim, Y.shape[1] if Y.ndim == 2 else None)

        def objective(p, X, *y):
            pred = self.apply(p, X)
            value = loss_fn(pred, *y)
            if l2:
                value = value + (0.5 * l2 * l2) * _ops.sum(p * p)
            return value

        def build():
            specs = [spec((self.n_params,), self.dtype), self._x_spec()]
            if Y is not None:
                specs.append(spec((None,) + tuple(Y.shape[1:]), self.dtype))
            return compile(objective, *specs, wrt=0, dtype=self.dtype)

        return self._program(("loss", loss, l2, y_key), build)

    def _loss_args(self, X: Any, Y: Any):
        X = self._x(X)
        if Y is None:
            return (self._params, X), None
        Y = np.asarray(Y)
        if Y.ndim == 0 or Y.ndim > 2 or Y.shape[0] != X.shape[0]:
            raise ValueError(f"targets Y must have {X.shape[0]} rows like X; got shape {Y.shape}")
        return (self._params, X, Y), Y

    def loss(self, X: Any, Y: Any = None, *, loss: Loss = "sse", l2: float = 0.0) -> float:
        """The loss of the network's outputs on X (against targets Y, when the loss takes them).

        `loss`: "sse" (sum of squares; without Y, of the outputs themselves), "mse",
        "cross_entropy" (Y integer labels (N,) or probabilities (N, K)), "bce_logits", or a traced
        function ``loss(pred, Y)`` (``loss(pred)`` without Y). `l2` = λ adds ½·λ²·Σθ² (the weight
        penalty of seed 002).
        """
        args, Y = self._loss_args(X, Y)
        return self._loss_program(loss, Y, l2)(*args)

    def value_and_grad(self, X: Any, Y: Any = None, *, loss: Loss = "sse", l2: float = 0.0,
                       out: Optional[np.ndarray] = None) -> Union[float, Tuple[float, np.ndarray]]:
        """The loss (see `loss`) and its gradient with respect to ``params``: writes the gradient
        into `out` (P,) and returns the value, or returns ``(value, gradient)`` without `out`."""
        args, Y = self._loss_args(X, Y)
        return self._loss_program(loss, Y, l2).value_and_grad(*args, out=out)

    def grad(self, X: Any, Y: Any = None, *, loss: Loss = "sse", l2: float = 0.0,
             out: Optional[np.ndarray] = None) -> np.ndarray:
        """The gradient of the loss (see `loss`) with respect to ``params``, (P,)."""
        args, Y = self._loss_args(X, Y)
        return self._loss_program(loss, Y, l2).grad(*args, out=out)

    def per_sample_grads(self, X: Any, Y: Any = None, *, loss: Loss = "sse",
                         out: Optional[np.ndarray] = None) -> np.ndarray:
        """Per-sample gradients (N, P): row b is the gradient with respect to ``params`` of sample
        b's own loss, ``loss(model(X[b:b+1]), Y[b:b+1])``, from one batched forward and reverse
        pass (each layer's closed form: weight δ_b a_bᵀ, bias δ_b). `loss` as in `loss`; a
        custom loss must be a sum or mean of per-sample terms."""
        args, Y = self._loss_args(X, Y)
        return self._loss_program(loss, Y, 0.0).per_sample_grad(*args, out=out)

    def vjp(self, X: Any, cotangent: Any, *, wrt: str = "params",
            out: Optional[np.ndarray] = None) -> np.ndarray:
        """Pulls an output cotangent dY (N, out_features) back through the network: to the
        parameters (P,) with ``wrt="params"``, or to the inputs (N, in_features) with
        ``wrt="input"``. For a downstream function of your own: ``model.vjp(X, dloss_dY)``."""
        if wrt not in ("params", "input"):
            raise ValueError(f'wrt must be "params" or "input", got {wrt!r}')
        X = self._x(X)
        argnum = 0 if wrt == "params" else 1
        prog = self._program(("vjp", argnum), lambda: compile(
            self.apply, spec((self.n_params,), self.dtype), self._x_spec(), wrt=argnum,
            dtype=self.dtype))
        return prog.vjp(self._params, X, cotangent, out=out)
