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
from . import _optim
from ._fastad import fit_epochs, outer_diag, outer_sum
from ._progress import Progress
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
        self._scratch: Dict[Any, np.ndarray] = {}  # reused buffers of the curvature methods

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
        l2 = float(l2)
        y_key = None if Y is None else (Y.ndim, Y.shape[1] if Y.ndim == 2 else None)
        key = ("loss", loss, l2, y_key)
        prog = self._programs.get(key)
        if prog is not None:  # the per-call path: a program is only stored once checked
            return prog
        if isinstance(loss, str):
            if loss not in _LOSSES:
                raise ValueError(f"unknown loss {loss!r}; use a function or one of {sorted(_LOSSES)}")
            loss_fn = _LOSSES[loss]
        elif callable(loss):
            loss_fn = loss
        else:
            raise TypeError(f"loss must be a name or a function, got {loss!r}")
        if Y is not None and Y.ndim == 1 and isinstance(loss, str) and loss != "cross_entropy":
            raise ValueError(
                f"targets Y of shape {Y.shape} look like class labels, which only "
                f"cross_entropy takes; {loss} needs Y of shape (N, {self.out_features})"
            )

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

        return self._program(key, build)

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

    # Training -----------------------------------------------------------------------------------

    def fit(self, X: Any, Y: Any = None, *, loss: Loss = "mse",
            optimizer: Optional["_optim.Optimizer"] = None, epochs: int = 1, batch_size: int = 32,
            shuffle: bool = True, seed: int = 0, l2: float = 0.0, progress: bool = False,
            callback: Optional[Callable[[int, float], Any]] = None) -> np.ndarray:
        """Trains ``params`` in place and returns the loss of each epoch run, (epochs,) float64.

        The whole loop (shuffling, batching, forward, reverse, update) runs in the Rust core
        with the GIL released and allocates nothing per step. Each epoch visits the samples in
        the order ``fa.epoch_order(N, seed, epoch)`` (or in order with ``shuffle=False``), in
        batches of `batch_size` (the last one may be smaller), one `optimizer` update per batch
        (default ``fa.Adam()``; its state carries over between calls). The loss of an epoch is
        the mean of its batch losses weighted by batch size. `loss` and `l2` as in `loss`.

        ``progress=True`` shows a progress bar with the current loss (tqdm when installed).
        ``callback(epoch, loss)`` is called after every epoch; returning True stops training.
        """
        for name, v, least in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < least:
                raise ValueError(f"{name} must be an integer ≥ {least}, got {v!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        opt = _optim.optional(optimizer)
        args, Yc = self._loss_args(X, Y)
        X = np.ascontiguousarray(args[1], self.dtype)  # converted once, not per epoch
        if Yc is not None:
            Yc = np.ascontiguousarray(Yc, self.dtype)
        prog = self._loss_program(loss, Yc, l2)
        losses = np.full(int(epochs), np.nan)

        def run(first: int, count: int) -> None:
            fit_epochs(prog, self._params, X, Yc, opt._core, count, int(batch_size),
                       bool(shuffle), int(seed) % 2**64, first, losses[first:first + count])

        if not progress and callback is None:
            run(0, int(epochs))
            return losses
        bar = Progress(int(epochs)) if progress else None
        try:
            for e in range(int(epochs)):
                run(e, 1)
                if bar is not None:
                    bar.update(losses[e])
                if callback is not None and callback(e, float(losses[e])) is True:
                    return losses[:e + 1]
        finally:
            if bar is not None:
                bar.close()
        return losses

    def save(self, path: Any, *, optimizer: Optional["_optim.Optimizer"] = None) -> None:
        """Writes the model (and, when given, the optimiser's state) to `path` in fastad's
        pickle-free format (see ``fa.load``). Atomic: the file is written beside `path` and
        renamed over it, so a failed save leaves any previous file intact."""
        from ._io import save
        save(self, path, optimizer)

    # Curvature: Jacobians, Fisher and Gauss-Newton matrices ---------------------------------------

    def jacobian(self, X: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The Jacobian of the outputs with respect to ``params``, (N, K, P): ``J[b, k]`` is the
        gradient of output k of sample b. One batched reverse pass per output (K in all), each
        giving every sample's row by the layers' closed form."""
        X = self._x(X)
        n, k, p = X.shape[0], self.out_features, self.n_params
        J = self._out(out, (n, k, p), "out", X)
        if k == 1:  # J[:, 0, :] is contiguous: write into it directly
            self._seeded_rows(X, self._unit_seed(n, 0), J.reshape(n, p))
            return J
        for r0, r1, buf in self._tiles(n, 1):
            for c in range(k):
                self._seeded_rows(X[r0:r1], self._unit_seed(r1 - r0, c), buf)
                J[r0:r1, c] = buf
        return J

    def fisher(self, X: Any, Y: Any = None, *, loss: Loss = "sse", kind: str = "empirical",
               out: Optional[np.ndarray] = None) -> np.ndarray:
        """A curvature matrix of the loss, (P, P), summed over samples without ever holding the
        per-sample gradients (N, P) or the Jacobian (N, K, P): batch tiles stream through the
        GEMM, so memory is of order P² plus one tile whatever N is.

        ``kind="empirical"``: Σ_b g_b g_bᵀ, g_b the per-sample gradients of `per_sample_grads`
        (any loss that is a sum or mean of per-sample terms). ``kind="ggn"``: the generalised
        Gauss-Newton matrix Σ_b J_bᵀ Λ_b J_b, J_b the Jacobian of sample b's outputs and Λ_b the
        Hessian of its own loss term with respect to them: 2I for "sse", (2/K)I for "mse",
        diag(p) − ppᵀ (times Σ_k y_k for probability targets) with p = softmax for
        "cross_entropy", diag(σ(1 − σ))/K for "bce_logits". Λ_b is factored as M_bᵀM_b, so the
        GGN is a sum of outer products of the K rows M_b J_b, each from a reverse pass."""
        X, Y, rows = self._curvature_rows(X, Y, loss, kind)
        p = self.n_params
        F = self._out(out, (p, p), "out", X, Y)
        F[...] = 0.0
        for _, _, block in rows():
            outer_sum(block, out=F, accumulate=True)
        return F

    def fisher_diag(self, X: Any, Y: Any = None, *, loss: Loss = "sse", kind: str = "empirical",
                    out: Optional[np.ndarray] = None) -> np.ndarray:
        """The diagonal of `fisher` (same arguments), (P,), streamed the same way."""
        X, Y, rows = self._curvature_rows(X, Y, loss, kind)
        d = self._out(out, (self.n_params,), "out", X, Y)
        d[...] = 0.0
        for _, _, block in rows():
            outer_diag(block, out=d, accumulate=True)
        return d

    def per_sample_grad_norms(self, X: Any, Y: Any = None, *, loss: Loss = "sse",
                              out: Optional[np.ndarray] = None) -> np.ndarray:
        """‖g_b‖ for each sample's gradient g_b (see `per_sample_grads`), (N,), streamed over
        batch tiles (the (N, P) gradients are never held)."""
        X, Y, rows = self._curvature_rows(X, Y, loss, "empirical")
        norms = self._out(out, (X.shape[0],), "out", X, Y)
        for r0, r1, G in rows():
            np.einsum("ij,ij->i", G, G, out=norms[r0:r1])
        np.sqrt(norms, out=norms)
        return norms

    # The pieces behind them.

    # Elements of one tile of per-sample rows: with P ≈ 2,000 a tile has ~500 rows, enough for the
    # GEMM to run at full speed and small enough to stay in the last-level cache.
    _TILE_ELEMENTS = 1 << 20

    def _tiles(self, n: int, rows_per_sample: int):
        """(start, stop, buffer) for each batch tile; the buffer (stop − start, P) is reused."""
        p = self.n_params
        t = max(1, min(n, self._TILE_ELEMENTS // max(1, rows_per_sample * p)))
        key = ("tile", t * rows_per_sample)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.empty((t * rows_per_sample, p), self.dtype)
        for r0 in range(0, n, t):
            r1 = min(n, r0 + t)
            yield r0, r1, buf[:(r1 - r0) * rows_per_sample]

    def _out(self, out: Optional[np.ndarray], shape: Tuple[int, ...], what: str,
             *inputs: Any) -> np.ndarray:
        """`out` checked like the compiled programs check theirs (nothing written on error), or a
        new array."""
        if out is None:
            return np.empty(shape, self.dtype)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{what} must be a NumPy array of dtype {self.dtype} and shape "
                            f"{shape}, got {type(out).__name__}")
        if out.dtype != self.dtype:
            raise TypeError(f"{what} has dtype {out.dtype}; expected {self.dtype}")
        if out.shape != shape:
            raise ValueError(f"{what} has shape {out.shape}; expected {shape}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"{what} must be C-contiguous and writable")
        for a in (self._params,) + inputs:
            if isinstance(a, np.ndarray) and np.shares_memory(a, out):
                raise ValueError(f"{what} overlaps an input (X, Y or the parameters)")
        return out

    def _seeded_rows(self, X: np.ndarray, C: np.ndarray, out: np.ndarray) -> None:
        """out[b] = J_bᵀ C[b]: each sample's vector-Jacobian product with its own cotangent row,
        as the per-sample gradients of Σ_b f(x_b)·C[b]."""
        prog = self._program("seeded", lambda: compile(
            lambda p, X, C: _ops.sum(self.apply(p, X) * C),
            spec((self.n_params,), self.dtype), self._x_spec(),
            spec((None, self.out_features), self.dtype), wrt=0, dtype=self.dtype))
        prog.per_sample_grad(self._params, X, C, out=out)

    def _unit_seed(self, n: int, k: int, scale: Any = 1.0) -> np.ndarray:
        C = np.zeros((n, self.out_features), self.dtype)
        C[:, k] = scale
        return C

    def _curvature_rows(self, X: Any, Y: Any, loss: Loss, kind: str):
        """Checked X and Y, and a generator of (start, stop, R) per batch tile: R (rows, P) are
        the tile's rows, whose Σ RᵀR over the tiles is the curvature matrix of `kind` (for
        "empirical", R holds samples start..stop's gradients)."""
        if kind not in ("empirical", "ggn"):
            raise ValueError(f'kind must be "empirical" or "ggn", got {kind!r}')
        if kind == "ggn" and not (isinstance(loss, str) and loss in _LOSSES):
            raise ValueError(
                f"kind='ggn' needs the Hessian of the loss with respect to the outputs, known for "
                f"the built-in losses {sorted(_LOSSES)}; got {loss!r}. kind='empirical' takes any "
                f"loss that is a sum or mean of per-sample terms"
            )
        args, Y = self._loss_args(X, Y)
        X = args[1]
        prog = self._loss_program(loss, Y, 0.0)  # checks the loss and targets up front
        n, K = X.shape[0], self.out_features

        def empirical():
            for r0, r1, buf in self._tiles(n, 1):
                args = (X[r0:r1],) if Y is None else (X[r0:r1], Y[r0:r1])
                prog.per_sample_grad(self._params, *args, out=buf)
                yield r0, r1, buf

        def ggn():
            for r0, r1, buf in self._tiles(n, K):
                t = r1 - r0
                for c, C in enumerate(self._hessian_factor_rows(loss, X[r0:r1],
                                                                 None if Y is None else Y[r0:r1])):
                    self._seeded_rows(X[r0:r1], C, buf[c * t:(c + 1) * t])
                yield r0, r1, buf

        return X, Y, (empirical if kind == "empirical" else ggn)

    def _hessian_factor_rows(self, loss: str, X: np.ndarray, Y: Any):
        """The K cotangents C_k (rows b: row k of M_b, where Λ_b = M_bᵀ M_b is the Hessian of
        sample b's loss term with respect to the outputs f(x_b))."""
        n, K = X.shape[0], self.out_features
        if loss in ("sse", "mse"):
            scale = math.sqrt(2.0 if loss == "sse" else 2.0 / K)
            for k in range(K):
                yield self._unit_seed(n, k, scale)
            return
        f = self(X).astype(np.float64)
        if loss == "bce_logits":
            s = 1.0 / (1.0 + np.exp(-f))
            root = np.sqrt(s * (1.0 - s) / K)
            for k in range(K):
                yield self._unit_seed(n, k, root[:, k])
            return
        # cross_entropy: Λ = w (diag p − p pᵀ), w = Σ_k y_k (1 for labels); row k of M is
        # √(w p_k) (e_k − p).
        p = np.exp(f - f.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w = np.ones((n, 1)) if np.ndim(Y) == 1 else np.asarray(Y, np.float64).sum(1, keepdims=True)
        root = np.sqrt(w * p)
        for k in range(K):
            C = -p * root[:, k:k + 1]
            C[:, k] += root[:, k]
            yield C.astype(self.dtype)
