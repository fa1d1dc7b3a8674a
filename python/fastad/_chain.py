"""`Chain`: dense layers applied in sequence, with all parameters in one flat vector.

A `Chain` owns ``model.params``; each layer's weight (out, in) and bias (out,) are views into it.
``model.apply(p, X)`` emits the network's graph nodes, so a model composes with user code inside
``fa.compile``; the convenience methods (``model(X)``, ``value_and_grad``, ``vjp``, ...) compile
the programs they need on first use and replay them after. Training (`_training.py`),
curvature (`_curvature.py`) and model files (`_model_file.py`) live in their own modules; the
methods here hand over to them.
"""
from __future__ import annotations

import json
import math
import numbers
import pickle
import threading
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from . import _curvature, _model_file, _ops, _optim, _training
from ._compile import compile, spec
from ._dense import Dense
from ._losses import Loss as _LossObject, resolve

Loss = Union[str, _LossObject, Callable[..., Any]]

_INITS = ("pytorch", "glorot")


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
        self._loss_calls: Dict[Any, Any] = {}  # see `_loss_call`
        self._in_features = layers[0].in_features  # read on every call
        # Reused tile buffers of the curvature methods, one set per thread: calls from several
        # threads at once must not share them.
        self._scratch = threading.local()
        # Held by `fit`: two trainings of one model's parameters run one after the other.
        self._training = threading.Lock()

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
        shape = X.shape
        if len(shape) != 2 or shape[1] != self._in_features:  # inline: every call passes here
            self._check_x_shape(shape)
        return X

    def _check_x_shape(self, shape: Tuple[Any, ...]) -> None:
        """Raises unless inputs of this shape are (N, in_features), one sample per row."""
        if len(shape) != 2 or shape[1] != self.in_features:
            raise ValueError(
                f"X must have shape (N, {self.in_features}) (one sample per row); got {shape}"
            )

    @staticmethod
    def _check_y_rows(shape: Tuple[Any, ...], n: Any) -> None:
        """Raises unless targets of this shape have one or two axes and n rows (a row count not
        known yet, NaN for a Dask array, is not compared)."""
        known = len(shape) > 0 and shape[0] == shape[0] and n == n
        if len(shape) not in (1, 2) or (known and shape[0] != n):
            raise ValueError(f"targets Y must have {n} rows like X; got shape {shape}")

    def _program(self, key: Any, build: Callable[[], Any]) -> Any:
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = build()
        return prog

    def _x_spec(self):
        return spec((None, self.in_features), self.dtype)

    def __call__(self, X: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The outputs (N, out_features), written into `out` when given."""
        return self._forward_program()(self._params, self._x(X), out=out)

    def _forward_program(self):
        """The program of (params, X): the outputs."""
        return self._program("forward", lambda: compile(
            self.apply, spec((self.n_params,), self.dtype), self._x_spec(), dtype=self.dtype))

    def _loss_program(self, loss: Loss, Y: Any, l2: float):
        l2 = float(l2)
        y_key = None if Y is None else (Y.ndim, Y.shape[1] if Y.ndim == 2 else None)
        key = ("loss", loss, l2, y_key)
        prog = self._programs.get(key)
        if prog is not None:  # the per-call path: a program is only stored once checked
            return prog
        loss_fn = resolve(loss)

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

    def _loss_call(self, X: Any, Y: Any, loss: Loss, l2: float):
        """The loss program of `loss` and `l2`, and its arguments (params, X[, Y]) checked, with Y
        as the loss takes it. The per-call path of every loss method: what checking the targets
        decided for a (loss, l2, Y's columns) is kept, so a repeated call compares shapes only."""
        X = self._x(X)
        if type(l2) is not float or not math.isfinite(l2):
            l2 = _checked_l2(l2)  # before it keys the caches: NaN would miss them on every call
        if Y is None:
            key = (loss, l2, None)
        else:
            if not isinstance(Y, np.ndarray):
                Y = np.asarray(Y)
            shape = Y.shape
            if len(shape) not in (1, 2) or shape[0] != X.shape[0]:  # inline, as in `_x`
                self._check_y_rows(shape, X.shape[0])
            key = (loss, l2, shape[1] if len(shape) == 2 else ())
        call = self._loss_calls.get(key)
        if call is None:
            call = self._loss_calls[key] = self._new_loss_call(Y, loss, l2)
        prog, as_column = call
        if Y is None:
            return prog, (self._params, X)
        return prog, (self._params, X, Y.reshape(-1, 1) if as_column else Y)

    def _new_loss_call(self, Y: Optional[np.ndarray], loss: Loss, l2: float):
        """(program, whether Y (N,) is passed as (N, 1)) for `_loss_call`; raises for targets the
        loss does not take."""
        taken = resolve(loss).check_targets(Y, self.out_features)
        return self._loss_program(loss, taken, l2), taken is not Y

    def loss(self, X: Any, Y: Any = None, *, loss: Loss = "sse", l2: float = 0.0) -> float:
        """The loss of the network's outputs on X (against targets Y, when the loss takes them).

        `loss`: "sse" (sum of squares; without Y, of the outputs themselves), "mse",
        "cross_entropy" (Y integer labels (N,) or probabilities (N, K)), "bce_logits", or a traced
        function ``loss(pred, Y)`` (``loss(pred)`` without Y). `l2` = λ adds ½·λ²·Σθ² (the weight
        penalty of seed 002).
        """
        prog, args = self._loss_call(X, Y, loss, l2)
        return prog(*args)

    def value_and_grad(self, X: Any, Y: Any = None, *, loss: Loss = "sse", l2: float = 0.0,
                       out: Optional[np.ndarray] = None) -> Union[float, Tuple[float, np.ndarray]]:
        """The loss (see `loss`) and its gradient with respect to ``params``: writes the gradient
        into `out` (P,) and returns the value, or returns ``(value, gradient)`` without `out`."""
        prog, args = self._loss_call(X, Y, loss, l2)
        return prog.value_and_grad(*args, out=out)

    def grad(self, X: Any, Y: Any = None, *, loss: Loss = "sse", l2: float = 0.0,
             out: Optional[np.ndarray] = None) -> np.ndarray:
        """The gradient of the loss (see `loss`) with respect to ``params``, (P,)."""
        prog, args = self._loss_call(X, Y, loss, l2)
        return prog.grad(*args, out=out)

    def per_sample_grads(self, X: Any, Y: Any = None, *, loss: Loss = "sse",
                         out: Optional[np.ndarray] = None) -> np.ndarray:
        """Per-sample gradients (N, P): row b is the gradient with respect to ``params`` of sample
        b's own loss, ``loss(model(X[b:b+1]), Y[b:b+1])``, from one batched forward and reverse
        pass (each layer's closed form: weight δ_b a_bᵀ, bias δ_b). `loss` as in `loss`; a
        custom loss must be a sum or mean of per-sample terms."""
        prog, args = self._loss_call(X, Y, loss, 0.0)
        return prog.per_sample_grad(*args, out=out)

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

    # Training, model files ---------------------------------------------------------------------

    def fit(self, X: Any, Y: Any = None, *, loss: Loss = "sse",
            optimizer: Optional["_optim.Optimizer"] = None, epochs: int = 1, batch_size: int = 32,
            shuffle: bool = True, seed: int = 0, l2: float = 0.0, progress: bool = False,
            callback: Optional[Callable[[int, float], Any]] = None) -> np.ndarray:
        """Trains ``params`` in place and returns the loss of each epoch run, (epochs,) float64.

        The whole loop (shuffling, batching, forward, reverse, update) runs in the Rust core
        with the GIL released and allocates nothing per step. Each epoch visits the samples in
        the order ``fa.epoch_order(N, seed, epoch)`` (or in order with ``shuffle=False``), in
        batches of `batch_size` (the last one may be smaller), one `optimizer` update per batch
        (default ``fa.Adam()``; its state carries over between calls). The loss of an epoch is
        the mean of its batch losses weighted by batch size. `loss` and `l2` as in `loss`
        (the default is "sse", as for every method; pass ``loss="mse"`` for a mean).

        Ctrl-C stops training within about 0.1 s, after a whole update: ``params`` and the
        optimiser's state are those of the last completed step, and the ``KeyboardInterrupt``
        raised carries the completed epochs' losses as its ``losses`` attribute. Two `fit` calls
        on one model from different threads run one after the other.

        ``progress=True`` shows a progress bar with the current loss (tqdm when installed).
        ``callback(epoch, loss)`` is called after every epoch; returning True stops training.
        """
        return _training.fit(self, X, Y, loss=loss, optimizer=optimizer, epochs=epochs,
                             batch_size=batch_size, shuffle=shuffle, seed=seed, l2=l2,
                             progress=progress, callback=callback)

    def save(self, path: Any, *, optimizer: Optional["_optim.Optimizer"] = None) -> None:
        """Writes the model (and, when given, the optimiser's state) to `path` in fastad's
        pickle-free format (see ``fa.load``); the same as ``fa.save(model, path)``. Atomic: the
        file is written beside `path` and renamed over it, so a failed save leaves any previous
        file intact."""
        _model_file.save(self, path, optimizer)

    def __reduce__(self) -> Tuple[Any, Tuple[bytes, bytes]]:
        """Pickles (and copies) through the model file's representation: its JSON header and
        the parameters' bytes, rebuilt by a fastad function that validates both. Compiled
        programs are not pickled; the copy compiles its own on first use. Models whose layers
        have activation functions of one's own cannot be pickled (as they cannot be saved)."""
        try:
            header = json.dumps(_model_file.describe(self, "a pickle")).encode()
        except ValueError as e:
            raise pickle.PicklingError(f"cannot pickle {self!r}: {e}") from None
        return _unpickled, (header, self._params.tobytes())

    # Curvature: Jacobians, Fisher and Gauss-Newton matrices (`_curvature.py`) ---------------------

    def jacobian(self, X: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The Jacobian of the outputs with respect to ``params``, (N, K, P): ``J[b, k]`` is the
        gradient of output k of sample b. One batched reverse pass per output (K in all), each
        giving every sample's row by the layers' closed form."""
        return _curvature.jacobian(self, X, out)

    def fisher(self, X: Any, Y: Any = None, *, loss: Loss = "sse", kind: str = "empirical",
               structure: str = "full", out: Any = None, accumulate: bool = False) -> Any:
        """A curvature matrix of the loss, summed over samples without ever holding the
        per-sample gradients (N, P) or the Jacobian (N, K, P): batch tiles stream through the
        GEMM, so memory is of order P² plus one tile whatever N is.

        ``kind="empirical"``: Σ_b g_b g_bᵀ, g_b the per-sample gradients of `per_sample_grads`
        (any loss that is a sum or mean of per-sample terms). ``kind="ggn"``: the generalised
        Gauss-Newton matrix Σ_b J_bᵀ Λ_b J_b, J_b the Jacobian of sample b's outputs and Λ_b the
        Hessian of its own loss term with respect to them: 2I for "sse", (2/K)I for "mse",
        diag(p) − ppᵀ (times Σ_k y_k for probability targets) with p = softmax for
        "cross_entropy", diag(σ(1 − σ))/K for "bce_logits". Λ_b is factored as M_bᵀM_b, so the
        GGN is a sum of outer products of the K rows M_b J_b, each from a reverse pass.

        ``structure="full"``: the matrix, (P, P). ``"diag"``: its diagonal, (P,) (as
        `fisher_diag`). ``"kron"``: the Kronecker factors of each dense layer, a pair of lists
        ``(A, G)``: for a layer with inputs a (n_in) and product z = W a + b (n_out),
        A_l = Σ_b ā_b ā_bᵀ with ā = [a, 1] ((n_in + 1)², without the 1 for a layer without
        bias) and G_l = Σ_b δ_b δ_bᵀ (n_out²), δ_b the derivative of sample b's loss term (for
        "ggn": of each row of M_b f_b) with respect to z. The layer's block of the matrix, its
        parameters ordered as the rows of [W | b], is approximately G_l ⊗ A_l / N (K-FAC);
        exactly so for one sample with one output. Computed in Rust from the batched sweeps
        that give per-sample gradients, tile by tile.

        `out`: the array (for "kron", the pair of lists of arrays) to write into; with
        ``accumulate=True`` the sums are added to `out` instead, so a dataset can stream
        through in pieces."""
        return _curvature.fisher(self, X, Y, loss, kind, structure, out, accumulate)

    def fisher_diag(self, X: Any, Y: Any = None, *, loss: Loss = "sse", kind: str = "empirical",
                    out: Optional[np.ndarray] = None, accumulate: bool = False) -> np.ndarray:
        """The diagonal of `fisher` (same arguments), (P,), streamed the same way; with
        ``accumulate=True``, added to `out`."""
        return _curvature.fisher(self, X, Y, loss, kind, "diag", out, accumulate)

    def per_sample_grad_norms(self, X: Any, Y: Any = None, *, loss: Loss = "sse",
                              out: Optional[np.ndarray] = None) -> np.ndarray:
        """‖g_b‖ for each sample's gradient g_b (see `per_sample_grads`), (N,), streamed over
        batch tiles (the (N, P) gradients are never held)."""
        return _curvature.per_sample_grad_norms(self, X, Y, loss, out)


def _checked_l2(l2: Any) -> float:
    """`l2` as a float: a finite real number (an int or NumPy scalar too, not a string)."""
    if not isinstance(l2, numbers.Real):
        raise TypeError(f"l2 must be a real number, got {type(l2).__name__} {l2!r}")
    if not math.isfinite(l2):
        raise ValueError(f"l2 must be finite, got {l2!r}")
    return float(l2)


def load(path: Any, *, with_optimizer: bool = False) -> Union[Chain, Tuple[Chain, Optional[_optim.Optimizer]]]:
    """Reads a model saved by ``fa.save(model, path)`` / ``model.save(path)``; with
    ``with_optimizer=True`` returns ``(model, optimizer)`` (None when the file holds no
    optimiser). Raises ``fa.FormatError`` for a file that is not a valid fastad model, naming the
    problem; never executes its contents."""
    contents = _model_file.read(path)
    model = _built(contents)
    return (model, contents.optimizer) if with_optimizer else model


def _built(contents: _model_file.Contents) -> Chain:
    """The Chain of a model file's (or a pickle's) validated contents."""
    layers = [Dense(l["in"], l["out"], l["activation"], use_bias=l["use_bias"])
              for l in contents.layers]
    model = Chain(*layers, dtype=contents.dtype)
    model.params[:] = contents.params
    return model


def _unpickled(header: bytes, params: bytes) -> Chain:
    """`Chain.__reduce__`'s inverse: the model of a pickle's header and parameter bytes."""
    return _built(_model_file.parse("a pickled fa.Chain", header, params))


def save(model: Chain, path: Any, *, optimizer: Optional[_optim.Optimizer] = None) -> None:
    """Writes `model` (and, when given, `optimizer`'s state) to `path`: see ``Chain.save``."""
    if not isinstance(model, Chain):
        raise TypeError(f"fa.save writes a fa.Chain, got {type(model).__name__}")
    model.save(path, optimizer=optimizer)
