"""fastad: fast reverse-mode automatic differentiation for NumPy, with a compiled Rust tape.

Trace a function once with ``fa.compile``; the resulting ``Program`` replays forward and reverse
sweeps over preallocated buffers, writes into your arrays (``out=``) and allocates nothing per call.

>>> import numpy as np, fastad as fa
>>> def eam(x):
...     rho = fa.sum(fa.exp(-3.0 * (x + 1.0)))
...     return rho**2 + rho**3 + 0.25 * rho**4
>>> f = fa.compile(eam, fa.spec((100,), np.float64))
>>> x = np.random.rand(100); g = np.empty(100)
>>> v = f.value_and_grad(x, out=g)
"""
from ._fastad import (
    Program, _instruction_sets, allocation_count, epoch_order, get_num_threads, instruction_set,
    outer, outer_diag, outer_sum, set_num_threads,
)
from ._compile import Spec, compile, spec
from ._ops import (
    abs, cos, exp, expm1, log, log1p, log_softmax, logsumexp, matmul, maximum, mean, minimum, relu,
    reshape, sigmoid, sin, softmax, softplus, sqrt, square, sum, take_along_rows, tanh, transpose,
)
from ._losses import Loss, bce_logits, cross_entropy, mse, sse
from ._tracer import Tracer
from ._activations import gelu
from ._dense import Dense
from ._chain import Chain, load, save
from ._optim import SGD, Adam, AdamW, Optimizer
from ._model_file import FormatError
from ._laplace import Laplace

__version__ = "0.1.0"

# This architecture's instruction sets, widest first; FASTAD_SIMD caps the kernels at one.
_INSTRUCTION_SETS = tuple(_instruction_sets())


def _check_simd_variable() -> None:
    import os
    import warnings
    value = os.environ.get("FASTAD_SIMD")
    if value is not None and value.strip().lower() not in _INSTRUCTION_SETS:
        warnings.warn(f"FASTAD_SIMD={value!r} is not one of {_INSTRUCTION_SETS}; ignored "
                      f"(fastad runs with {instruction_set()!r})", RuntimeWarning, stacklevel=3)


def _narrower_instruction_sets() -> list:
    """The instruction sets narrower than the one the kernels use (for the test suite, which
    runs again under each with FASTAD_SIMD)."""
    return list(_INSTRUCTION_SETS[_INSTRUCTION_SETS.index(instruction_set()) + 1:])


_check_simd_variable()

__all__ = [
    "Chain", "Dense", "Program", "Spec", "Tracer", "gelu", "allocation_count", "compile", "get_num_threads", "set_num_threads",
    "spec", "abs", "bce_logits", "cos", "cross_entropy", "exp", "expm1", "log", "log1p",
    "log_softmax", "logsumexp", "matmul", "maximum", "mean", "minimum", "mse", "relu", "reshape",
    "sigmoid", "sin", "softmax", "softplus", "sqrt", "square", "sse", "sum", "take_along_rows",
    "tanh", "transpose", "outer", "outer_sum", "outer_diag", "SGD", "Adam", "AdamW", "Optimizer",
    "FormatError", "load", "save", "epoch_order", "Loss", "instruction_set",
    "Laplace",
]
