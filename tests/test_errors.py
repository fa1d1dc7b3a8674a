"""Bad input gives clear errors, writes nothing, and leaves the program working."""
import numpy as np
import pytest

import fastad as fa
from conftest import errors_in_threads


@pytest.fixture
def prog():
    def loss(W, X):
        return fa.sum(fa.tanh(X @ W.T))
    return fa.compile(loss, fa.spec((2, 3)), fa.spec((None, 3)), wrt=(0, 1))


def good_args(n=4):
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 3)), rng.normal(size=(n, 3))


def reference(W, X):
    t = np.tanh(X @ W.T)
    return t.sum(), (1 - t**2).T @ X, (1 - t**2) @ W


def still_correct(prog):
    W, X = good_args(5)
    v, (gW, gX) = prog.value_and_grad(W, X)
    rv, rW, rX = reference(W, X)
    assert np.isclose(v, rv) and np.allclose(gW, rW) and np.allclose(gX, rX)


def test_wrong_out_dtype_shape_layout(prog):
    W, X = good_args()
    gX = np.empty((4, 3))
    cases = [
        ((np.empty((2, 3), np.float32), gX), TypeError, "dtype float32; expected float64"),
        ((np.empty((3, 2)), gX), ValueError, r"shape \(3, 2\); expected \(2, 3\)"),
        ((np.empty((2, 3)), np.empty((5, 3))), ValueError, r"out\[1\] has shape \(5, 3\); expected \(4, 3\)"),
        ((np.empty((3, 2)).T, gX), ValueError, "C-contiguous"),
        ((np.empty((2, 3)), gX, gX), ValueError, "expected 2"),
        ((np.empty((2, 3)).tolist(), gX), TypeError, "must be a NumPy array"),
    ]
    for out, exc, msg in cases:
        sentinel = np.full((4, 3), 7.0)
        out = tuple(sentinel if o is gX else o for o in out)
        with pytest.raises(exc, match=msg):
            prog.value_and_grad(W, X, out=out)
        assert np.all(sentinel == 7.0), "nothing may be written on error"
    ro = np.zeros((2, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        prog.value_and_grad(W, X, out=(ro, gX))
    with pytest.raises(TypeError, match="tuple"):
        prog.value_and_grad(W, X, out=gX)
    still_correct(prog)


def test_out_aliasing_an_input_or_another_out(prog):
    W, X = good_args()
    with pytest.raises(ValueError, match="shares memory with argument 1 \\(X\\)"):
        prog.value_and_grad(W, X, out=(np.empty((2, 3)), X))
    gW = np.empty((2, 3))
    with pytest.raises(ValueError, match="shares memory"):
        prog.value_and_grad(W, X, out=(W, np.empty((4, 3))))
    pair = np.empty((2, 3))
    f = fa.compile(lambda a, b: fa.sum(a * b), fa.spec((2, 3)), fa.spec((2, 3)), wrt=(0, 1))
    with pytest.raises(ValueError, match=r"out\[1\] shares memory with out\[0\]"):
        f.value_and_grad(W, W + 1, out=(pair, pair))
    del gW
    still_correct(prog)


def test_wrong_inputs(prog):
    W, X = good_args()
    with pytest.raises(ValueError, match=r"argument 1 \(X\) has shape \(4, 2\); expected \(None, 3\)"):
        prog(W, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"argument 0 \(W\) has shape \(3,\); expected \(2, 3\)"):
        prog(np.zeros(3), X)
    with pytest.raises(TypeError, match="takes 2 arguments, got 1"):
        prog(W)
    with pytest.raises(TypeError, match="takes 2 arguments, got 3"):
        prog.grad(W, X, X)
    with pytest.raises(TypeError, match="complex128, which does not convert to float64"):
        prog(W.astype(complex), X)
    with pytest.raises(TypeError, match="does not convert"):
        prog(W, np.array([["a", "b", "c"]]))
    two = fa.compile(lambda a, b: fa.sum(a) + fa.sum(b), fa.spec((None, 2)), fa.spec((None, 2)))
    with pytest.raises(ValueError, match=r"batch sizes differ: argument 0 \(a\) has 3 rows, argument 1 \(b\) has 4"):
        two(np.zeros((3, 2)), np.zeros((4, 2)))
    still_correct(prog)


def test_inputs_are_converted(prog):
    W, X = good_args()
    rv = reference(W, X)[0]
    assert np.isclose(prog(W.astype(np.float32).astype(np.float64), X), reference(W.astype(np.float32).astype(np.float64), X)[0])
    assert np.isclose(prog(W.tolist(), np.asfortranarray(X)), rv)
    assert np.isclose(prog(W, X[:, ::-1][:, ::-1]), rv)
    assert np.isclose(prog(W.astype(">f8"), X), rv)
    ints = fa.compile(lambda x: fa.sum(x * x), fa.spec((3,)))
    assert ints(np.array([1, 2, 3])) == 14.0
    assert ints([1, 2, 3]) == 14.0


def test_non_scalar_outputs_need_vjp():
    f = fa.compile(lambda x: x * 2.0, fa.spec((3,)))
    with pytest.raises(TypeError, match=r"scalar output.*shape \(3,\).*vjp"):
        f.grad(np.ones(3))
    with pytest.raises(ValueError, match=r"cotangent.*has shape \(2,\); expected \(3,\)"):
        f.vjp(np.ones(3), np.ones(2))
    out = np.empty(3)
    assert f(np.ones(3), out=out) is out and np.array_equal(out, [2, 2, 2])


def test_tracing_errors():
    with pytest.raises(TypeError, match="fixed graph"):
        fa.compile(lambda x: x if x > 0 else -x, fa.spec(()))
    with pytest.raises(TypeError, match="fixed graph"):
        fa.compile(lambda x: fa.sum(x) if fa.sum(x) else x, fa.spec((3,)))
    with pytest.raises(TypeError, match="fastad functions"):
        fa.compile(lambda x: fa.sum(np.asarray(x)), fa.spec((3,)))
    with pytest.raises(TypeError, match="numpy.arctan2 cannot be traced"):
        fa.compile(lambda x: fa.sum(np.arctan2(x, x)), fa.spec((3,)))
    with pytest.raises(ValueError, match=r"matmul: shapes \(None, 3\) and \(4, 2\) do not align"):
        fa.compile(lambda x, w: fa.sum(x @ w), fa.spec((None, 3)), fa.spec((4, 2)))
    with pytest.raises(ValueError, match=r"shapes \(None, 3\) and \(4,\) cannot be broadcast"):
        fa.compile(lambda x, w: fa.sum(x + w), fa.spec((None, 3)), fa.spec((4,)))
    with pytest.raises(TypeError, match="return one traced array"):
        fa.compile(lambda x: 1.0, fa.spec((3,)))
    with pytest.raises(ValueError, match="wrt"):
        fa.compile(lambda x: fa.sum(x), fa.spec((3,)), wrt=1)
    with pytest.raises(ValueError, match="only the first dimension"):
        fa.spec((3, None))
    with pytest.raises(ValueError, match="rank 0, 1 or 2"):
        fa.spec((1, 2, 3))
    with pytest.raises(TypeError, match="mix float32 and float64"):
        fa.compile(lambda a, b: fa.sum(a * b), np.zeros(2, np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="out of bounds"):
        fa.compile(lambda x: fa.sum(x, axis=2), fa.spec((2, 2)))


def test_concurrent_calls_from_threads_are_safe():
    def loss(W, X):
        return fa.sum(fa.tanh(X @ W.T))
    f = fa.compile(loss, fa.spec((2, 3)), fa.spec((None, 3)), wrt=(0, 1))
    rng = np.random.default_rng(3)
    problems = [(rng.normal(size=(2, 3)), rng.normal(size=(int(rng.integers(1, 300)), 3))) for _ in range(8)]
    errors = []

    def worker(k):
        W, X = problems[k]
        rv, rW, rX = reference(W, X)
        gW, gX = np.empty((2, 3)), np.empty_like(X)
        for _ in range(200):
            v = f.value_and_grad(W, X, out=(gW, gX))
            if not (np.isclose(v, rv) and np.allclose(gW, rW) and np.allclose(gX, rX)):
                errors.append(k)
                return

    assert not errors_in_threads(worker, range(8))
    assert not errors


def test_num_threads():
    old = fa.get_num_threads()
    fa.set_num_threads(1)
    assert fa.get_num_threads() == 1
    with pytest.raises(ValueError):
        fa.set_num_threads(0)
    fa.set_num_threads(old)


def test_a_buffer_larger_than_memory_raises_memory_error_and_the_program_survives():
    """The core grows buffers fallibly (rust/buffer.rs): 320 GB of intermediate values are a
    MemoryError naming the size, not an abort. Run in a subprocess: an abort would kill pytest."""
    import subprocess
    import sys
    code = (
        "import numpy as np, fastad as fa\n"
        "f = fa.compile(lambda X: fa.sum(X @ X.T), fa.spec((None, 2)))\n"
        "try:\n"
        "    f(np.ones((200000, 2)))\n"
        "except MemoryError as e:\n"
        "    assert '320000000000 bytes' in str(e), e\n"
        "    print('MemoryError')\n"
        "print(f(np.ones((3, 2))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["MemoryError", "18.0"]
