"""Type stubs for the native extension fastad._fastad."""
from typing import Any, List, Optional, Tuple, Union

import numpy as np
from numpy.typing import NDArray

_Shape = List[Optional[int]]
_Grads = Union[NDArray[Any], Tuple[NDArray[Any], ...]]

class Graph:
    """The tracer's handle on the IR: each method adds one node and returns its id."""
    def __init__(self) -> None: ...
    def input(self, shape: _Shape) -> int: ...
    def constant(self, value: float) -> int: ...
    def constant_array(self, array: NDArray[np.float64]) -> int: ...
    def unary(self, name: str, x: int, p: float = 0.0) -> int: ...
    def binary(self, name: str, a: int, b: int) -> int: ...
    def matmul(self, a: int, b: int) -> int: ...
    def transpose(self, x: int) -> int: ...
    def reshape(self, x: int, shape: _Shape) -> int: ...
    def slice(self, x: int, start: int, shape: _Shape) -> int: ...
    def reduce(self, name: str, x: int, axis: Optional[int] = None, keepdims: bool = False) -> int: ...
    def softmax(self, x: int, axis: Optional[int] = -1, log: bool = False) -> int: ...
    def take_along_rows(self, x: int, index: int) -> int: ...
    def shape(self, x: int) -> _Shape: ...
    def __len__(self) -> int: ...

class Program:
    """A compiled program: replays forward and reverse sweeps without allocating.

    Inputs are NumPy arrays (converted, with a copy, if not C-contiguous of the program's dtype;
    a scalar argument also a Python or NumPy scalar). `out=` arrays must have exactly the
    expected shape and dtype, be C-contiguous, writable and not share memory with an input;
    otherwise ValueError/TypeError and nothing is written. Calls from several threads are safe
    (they take turns, the GIL released); MemoryError for a result that cannot be allocated;
    Ctrl-C stops a long call with KeyboardInterrupt.
    """
    def __init__(self, graph: Graph, output: int, wrt: List[int], dtype: str,
                 arg_names: List[str], wrt_tuple: bool = False) -> None: ...
    def __call__(self, *args: Any, out: Optional[NDArray[Any]] = None) -> Union[float, NDArray[Any]]:
        """The program's value: a float for a scalar output, else an array (written into `out`)."""
    def grad(self, *args: Any, out: Optional[_Grads] = None) -> _Grads:
        """Gradient(s) of the scalar output with respect to the `wrt` arguments."""
    def value_and_grad(self, *args: Any, out: Optional[_Grads] = None) -> Union[float, Tuple[float, _Grads]]:
        """The value, with gradients written into `out` (returns the value); `(value, grads)` without `out`."""
    def vjp(self, *args: Any, out: Optional[_Grads] = None,
            value_out: Optional[NDArray[Any]] = None) -> _Grads:
        """`vjp(*args, cotangent)`: Jᵀ·cotangent for each `wrt` argument."""
    def per_sample_grad(self, *args: Any, out: Optional[NDArray[Any]] = None) -> NDArray[Any]:
        """Per-sample gradients (N, P) of a loss that is a sum or mean over the batch, or of a
        program returning one loss per sample (N,), with respect to the one wrt argument, read
        only as dense layers' weights and biases."""
    @property
    def arg_shapes(self) -> List[_Shape]: ...
    @property
    def output_shape(self) -> _Shape: ...
    @property
    def wrt(self) -> List[int]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def num_ops(self) -> int: ...
    @property
    def tile_rows(self) -> Optional[int]:
        """Rows per tile when batches of at least twice this size replay tile by tile; None if
        the program is not row-local in its batch axis."""
    @property
    def tiles_gradient(self) -> bool:
        """Whether gradients replay tile by tile too (the output is a sum or mean over the batch)."""

def allocation_count() -> int:
    """Heap allocations made by the native extension since it was loaded, on all threads."""
def _allocated_bytes(reset_peak: bool = False) -> Tuple[int, int]:
    """(live, peak) bytes the native extension has allocated; reset_peak starts a new peak."""
def set_num_threads(n: int) -> None:
    """Sets the number of threads fastad's parallel kernels use (at least 1)."""
def get_num_threads() -> int:
    """The number of threads fastad's parallel kernels use."""
def instruction_set() -> str:
    """The vector instruction set the kernels run with here: "avx512", "avx2" or "baseline" on
    x86-64, "neon" or "baseline" on aarch64 (FASTAD_SIMD, read at start-up, caps it)."""
def _instruction_sets() -> List[str]:
    """This architecture's instruction sets, widest first."""
def _panic_in_guard(program: Optional[Program] = None) -> None:
    """Test hook: panics inside the guard of GIL-free calls (holding `program`'s lock when
    given); raises RuntimeError."""

def check_out(out: Any, shape: Tuple[int, ...], dtype: np.dtype, inputs: Tuple[Any, ...]) -> None:
    """Checks `out` by the rule every `out=` of fastad follows (exact dtype and shape,
    C-contiguous, aligned, writable) and that it shares no memory with `inputs`; raises
    TypeError/ValueError naming the problem."""

def outer(G: Any, out: Optional[NDArray[Any]] = None, packed: bool = False) -> NDArray[Any]:
    """H[b] = g_b g_bᵀ for each row g_b of G (N, P): (N, P, P), or (N, P(P+1)/2) upper triangles
    (row by row) with `packed`. float32 G computes in float32, anything else in float64."""
def outer_sum(G: Any, out: Optional[NDArray[Any]] = None,
              accumulate: bool = False) -> NDArray[Any]:
    """Σ_b g_b g_bᵀ = GᵀG, (P, P): the empirical Fisher of per-sample gradients G (N, P),
    one triangle computed and mirrored. With `accumulate=True` (and `out`), out += GᵀG, out
    taken as symmetric (its upper triangle is what is added to)."""
def _outer_sum_upper(G: Any, out: NDArray[Any], accumulate: bool) -> NDArray[Any]:
    """outer_sum's upper triangle only (the lower one left incomplete): for a sum streamed
    through many calls, completed once by _mirror_upper."""
def _mirror_upper(F: NDArray[Any]) -> None:
    """Copies the upper triangle of F (P, P) onto its lower one."""
def outer_diag(G: Any, out: Optional[NDArray[Any]] = None,
               accumulate: bool = False) -> NDArray[Any]:
    """Σ_b g_b², (P,): the diagonal of outer_sum. With `accumulate=True` (and `out`), out += Σ_b g_b²."""

def dense_layers(program: Program) -> List[Tuple[int, Optional[int], int, int]]:
    """The dense layers the program's differentiated argument is read as: (weight offset, bias
    offset or None, inputs, outputs) each, in order. ValueError saying why for other programs."""
def layer_rows(program: Program, *args: Any, adjoints: List[NDArray[Any]],
               inputs: Optional[List[NDArray[Any]]] = None) -> float:
    """One batched forward and reverse sweep, writing each dense layer's adjoint rows δ (N,
    outputs) and, when given, its inputs with the bias's 1 appended (N, inputs + 1). Returns
    the loss."""

def kron_factors(program: Program, *args: Any, G: List[NDArray[Any]],
                 A: Optional[List[NDArray[Any]]] = None) -> float:
    """One tiled forward and reverse sweep adding each dense layer's Kronecker factors of the
    batch: Σ δ δᵀ into G[l] (outputs, outputs) and, when given, Σ ā āᵀ into A[l] (inputs + 1,
    inputs + 1); nothing is added when the call fails. Returns the loss."""

class Optimizer:
    """The core of fa.SGD / fa.Adam / fa.AdamW: update rule and flat state buffers."""
    def __init__(self, rule: str, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None: ...
    lr: float
    @property
    def steps(self) -> int: ...
    @property
    def buffers_per_param(self) -> int: ...
    def step(self, params: NDArray[Any], grad: Any) -> None: ...
    def state_buffers(self) -> Optional[NDArray[Any]]: ...
    def set_state(self, steps: int, buffers: Optional[Any] = None) -> None: ...

def fit_epochs(program: Program, params: NDArray[Any], X: Any, Y: Optional[Any],
               optimizer: Optimizer, epochs: int, batch_size: int, shuffle: bool, seed: int,
               first_epoch: int, losses: NDArray[np.float64]) -> None:
    """Runs `epochs` epochs of training in the core (GIL released); see Chain.fit. Ctrl-C
    raises KeyboardInterrupt with an `epochs_completed` attribute, after a whole update."""
def epoch_order(n: int, seed: int, epoch: int) -> NDArray[np.int64]:
    """The sample order Chain.fit(shuffle=True, seed=seed) uses in epoch `epoch`; MemoryError
    when n int64 do not fit in memory."""
