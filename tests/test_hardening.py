"""Issue 12's classes of failure, one test each: crashes (run in a subprocess, asserting the
exception type and that the interpreter survives), silent wrong answers (several threads on one
model, traced comparisons, target widths), interrupts, and the smaller contract gaps."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastad as fa
from conftest import errors_in_threads


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter; a crash there cannot take pytest down."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def expect_lines(code: str, lines, timeout: float = 120) -> None:
    r = run_python(code, timeout)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stderr}"
    assert r.stdout.split("\n")[:-1] == lines, r.stdout + r.stderr


# Crashes ----------------------------------------------------------------------------------------

def test_sizes_from_user_input_raise_memory_error_and_the_interpreter_survives():
    expect_lines("""
        import numpy as np, fastad as fa
        def kind(f):
            try:
                f()
                return "ok"
            except Exception as e:  # a PanicException (BaseException) would escape this
                return f"{type(e).__name__}: {e}"
        # A shuffle of 10**12 samples: 8 TB.
        print(kind(lambda: fa.epoch_order(10**12, 0, 0)))
        # Outputs NumPy cannot make: an empty (0, 2**33, 2**33) overflows its size type.
        print(kind(lambda: fa.outer(np.ones((0, 2**33)))))
        print(kind(lambda: fa.outer(np.ones((2**20, 2**9)), packed=False)).split(" for ")[0])
        # Compiling a program with a 2**61-byte buffer; a call whose output NumPy cannot hold.
        print(kind(lambda: fa.compile(lambda x: x * 2.0, fa.spec((2**29, 2**29)))).split(" for ")[0])
        f = fa.compile(lambda x: x @ np.ones((1, 2**24)), fa.spec((None, 1)))
        print(kind(lambda: f(np.ones((2**21, 1)))).split(" for ")[0])
        # The program still works after its failure (and its lock is not poisoned).
        g = fa.compile(lambda X: fa.sum(X @ X.T), fa.spec((None, 2)))
        print(kind(lambda: g(np.ones((200000, 2)))).split(":")[0])
        print(g(np.ones((3, 2))), g.num_ops > 0)
    """, ["MemoryError: cannot allocate 8000000000000 bytes for an array of shape (1000000000000,)",
          "MemoryError: cannot allocate 0 bytes for an array of shape (0, 8589934592, 8589934592)",
          "MemoryError: cannot allocate 2199023255552 bytes",
          "MemoryError: cannot allocate 2305843009213693952 bytes",
          "MemoryError: cannot allocate 281474976710656 bytes", "MemoryError", "18.0 True"])


def test_shape_arithmetic_never_wraps_and_reshape_infers_one_dimension():
    x3 = fa.spec((3,))
    with pytest.raises(ValueError, match="more elements than any array can hold"):
        fa.compile(lambda x: fa.sum(fa.softmax(x.reshape(2**32 + 1, 18446744060824649731))), x3)
    with pytest.raises(ValueError, match="more elements than any array can hold"):
        fa.compile(lambda x: fa.sum(x), fa.spec((2**40, 2**40)))
    with pytest.raises(ValueError, match="cannot reshape"):
        fa.compile(lambda x: fa.sum(x.reshape(2, -1)), x3)
    with pytest.raises(ValueError, match="only one dimension"):
        fa.compile(lambda x: fa.sum(x.reshape(-1, -1)), x3)
    with pytest.raises(TypeError, match="ints ≥ 0, one -1 or None"):
        fa.compile(lambda x: fa.sum(x.reshape(-2, 3)), fa.spec((2, 3)))
    # reshape(-1) as in NumPy: a flat view; (None, -1) keeps the batch axis.
    A = np.arange(6.0).reshape(2, 3)
    f = fa.compile(lambda x: x.reshape(-1) * np.arange(6.0), fa.spec((2, 3)))
    np.testing.assert_array_equal(f(A), A.reshape(-1) * np.arange(6.0))
    g = fa.compile(lambda x: x.reshape(3, -1), fa.spec((2, 3)))
    assert g.output_shape == [3, 2]
    h = fa.compile(lambda X: fa.sum(X.reshape(None, -1) * np.arange(4.0)), fa.spec((None, 4)))
    X = np.ones((5, 4))
    assert h(X) == pytest.approx(5 * 6.0)
    np.testing.assert_array_equal(h.grad(X), np.tile(np.arange(4.0), (5, 1)))


def test_a_rust_panic_never_reaches_python_as_panic_exception():
    """Every GIL-free call runs in one guard (rust/python/errors.rs): a panic there is a
    RuntimeError, which `except Exception` catches, and the interpreter goes on."""
    expect_lines("""
        import fastad as fa
        from fastad import _fastad
        try:
            _fastad._panic_in_guard()
        except Exception as e:
            print(type(e).__name__, "test of the panic guard" in str(e))
        # A panic while holding a program's lock poisons it: the program recovers.
        f = fa.compile(lambda x: fa.sum(x * x), fa.spec((2,)))
        try:
            _fastad._panic_in_guard(f)
        except RuntimeError as e:
            print("RuntimeError", "holding the program's lock" in str(e))
        print(f([1.0, 2.0]), f.grad([1.0, 2.0]).tolist(), f.num_ops)
    """, ["RuntimeError True", "RuntimeError True", "5.0 [2.0, 4.0] 3"])
    # And no call releases the GIL outside that guard.
    root = os.path.join(os.path.dirname(__file__), "..", "rust", "python")
    for name in os.listdir(root):
        src = open(os.path.join(root, name)).read()
        if name not in ("errors.rs", "locked.rs"):  # locked.rs: waits for a lock, runs nothing
            assert ".detach(" not in src, f"{name} releases the GIL outside run_detached"


# Silent wrong answers -----------------------------------------------------------------------------

def hammer(calls, reference, threads=8, repeats=25):
    """Runs each call from `threads` threads at once, `repeats` times, and counts results that
    differ from `reference` (computed alone)."""
    wrong = []
    start = threading.Barrier(threads)

    def worker(t):
        start.wait()
        for r in range(repeats):
            k = (t + r) % len(calls)
            if not np.allclose(calls[k](), reference[k], rtol=1e-10, atol=1e-12):
                wrong.append(k)

    failures = [repr(e) for e in errors_in_threads(worker, range(threads))]
    assert not failures, failures
    assert not wrong, f"{len(wrong)} wrong results of calls {sorted(set(wrong))}"


def flat(factors):
    """The Kronecker factors ([A_l], [G_l]) as one vector."""
    return np.concatenate([f.ravel() for group in factors for f in group])


def test_every_model_method_is_safe_from_eight_threads():
    model = fa.Chain(fa.Dense(3, 6, "tanh"), fa.Dense(6, 3), dtype=np.float64, seed=0)
    model._TILE_ELEMENTS = 200  # many tiles per call: shared tile buffers would show
    rng = np.random.default_rng(1)
    data = [(rng.normal(size=(n, 3)), rng.normal(size=(n, 3))) for n in (37, 64, 91)]
    calls = []
    for X, Y in data:
        calls += [
            lambda X=X: model.jacobian(X),
            lambda X=X, Y=Y: model.fisher(X, Y, loss="mse"),
            lambda X=X, Y=Y: model.fisher(X, Y, loss="mse", kind="ggn"),
            lambda X=X, Y=Y: model.fisher_diag(X, Y, loss="sse", kind="ggn"),
            lambda X=X, Y=Y: flat(model.fisher(X, Y, loss="mse", structure="kron")),
            lambda X=X, Y=Y: flat(model.fisher(X, Y, loss="sse", kind="ggn", structure="kron")),
            lambda X=X, Y=Y: model.per_sample_grad_norms(X, Y, loss="mse"),
            lambda X=X, Y=Y: model.per_sample_grads(X, Y, loss="mse"),
            lambda X=X, Y=Y: model.value_and_grad(X, Y, loss="mse")[1],
            lambda X=X: model(X),
            lambda X=X, Y=Y: model.vjp(X, Y, wrt="input"),
            lambda X=X: fa.outer(X),
            lambda X=X: fa.outer_sum(X),
            lambda X=X: fa.outer_diag(X),
        ]
    hammer(calls, [c() for c in calls])


def test_programs_and_optimizers_are_safe_from_eight_threads():
    f = fa.compile(lambda W, X: fa.sum(fa.tanh(X @ W.T) ** 2), fa.spec((4, 3)),
                   fa.spec((None, 3)), wrt=0)
    rng = np.random.default_rng(2)
    W = rng.normal(size=(4, 3))
    Xs = [rng.normal(size=(n, 3)) for n in (1, 50, 700)]
    calls = [lambda X=X: f.grad(W, X) for X in Xs] + \
            [lambda X=X: f.per_sample_grad(W, X) for X in Xs]
    hammer(calls, [c() for c in calls])

    # One optimiser stepped from 8 threads: every update lands, one at a time (SGD without
    # momentum: the result is the same in any order).
    opt, params = fa.SGD(0.5), np.zeros(1000)
    g = np.ones(1000)

    def steps(_):
        for _ in range(100):
            opt.step(params, g)
    assert not errors_in_threads(steps, range(8))
    assert opt.steps == 800
    np.testing.assert_array_equal(params, np.full(1000, -400.0))


def test_traced_values_cannot_be_compared_or_searched():
    for f in (lambda s: s * 0 if s == 0 else s * 2, lambda s: s if s != 1 else s * 2,
              lambda s: s * (1.0 in s), lambda s: s * (s == s)):
        with pytest.raises(TypeError, match="fixed graph"):
            fa.compile(f, fa.spec((3,)))
    # Identity, hashing (the tracer in sets and dicts) still work.
    def g(s):
        assert s is s and len({s: 1}) == 1
        return fa.sum(s)
    assert fa.compile(g, fa.spec((3,)))(np.ones(3)) == 3.0


def test_targets_for_one_output_models_may_be_a_vector():
    model = fa.Chain(fa.Dense(2, 4, "tanh"), fa.Dense(4, 1), seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 2)), rng.normal(size=20)
    for loss in ("sse", "mse"):
        v, g = model.value_and_grad(X, y, loss=loss)
        v2, g2 = model.value_and_grad(X, y[:, None], loss=loss)
        pred = model(X)[:, 0]
        ref = np.sum((pred - y) ** 2) / (20 if loss == "mse" else 1)
        assert v == pytest.approx(ref) and v2 == pytest.approx(ref)
        np.testing.assert_allclose(g, g2)
    with pytest.raises(ValueError, match=r"needs targets Y of shape \(N, 1\).*\(20, 2\)"):
        model.fit(X, np.zeros((20, 2)), loss="mse")  # would have broadcast to (20, 2)
    hist = model.fit(X, y, loss="mse", epochs=3)
    assert hist.shape == (3,) and np.all(np.isfinite(hist))


def test_passing_an_optimizer_class_says_to_call_it():
    model = fa.Chain(fa.Dense(2, 1))
    with pytest.raises(TypeError, match=r"pass fa.Adam\(\).*not the class fa.Adam"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 1)), optimizer=fa.Adam)


# Interrupts ----------------------------------------------------------------------------------------

INTERRUPT_AFTER = """
import os, signal, sys, threading, time
import numpy as np, fastad as fa
def interrupt_after(seconds):
    t0 = time.perf_counter()
    def fire():
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=fire, daemon=True).start()
    return t0
"""


def test_ctrl_c_stops_fit_after_a_whole_step_with_its_history():
    """SIGINT 1 s into a 100-epoch fit: KeyboardInterrupt within a second, carrying the losses of
    the completed epochs; params are exactly those of `opt.steps` updates, replayed here with
    the optimiser's rule from NumPy gradients of the same batches."""
    expect_lines(INTERRUPT_AFTER + """
N, B, seed = 2048, 16, 3
rng = np.random.default_rng(0)
X, Y = rng.normal(size=(N, 8)), rng.normal(size=(N, 1))
model = fa.Chain(fa.Dense(8, 64, "tanh"), fa.Dense(64, 1), seed=1)
start = model.params.copy()
opt = fa.SGD(1e-3, momentum=0.9)
t0 = interrupt_after(1.0)
try:
    model.fit(X, Y, loss="mse", optimizer=opt, epochs=100000, batch_size=B, seed=seed)
    print("not interrupted")
except KeyboardInterrupt as e:
    late = time.perf_counter() - t0 - 1.0
    print("KeyboardInterrupt", late < 1.0, len(e.losses) == opt.steps // (N // B),
          np.all(np.isfinite(e.losses)))
# The same steps, replayed outside fit.
ref = fa.Chain(fa.Dense(8, 64, "tanh"), fa.Dense(64, 1), seed=1)
assert np.array_equal(ref.params, start)
replay = fa.SGD(1e-3, momentum=0.9)
step = 0
while step < opt.steps:
    order = fa.epoch_order(N, seed, step // (N // B))
    for b in range(N // B):
        if step == opt.steps:
            break
        idx = order[b * B:(b + 1) * B]
        replay.step(ref.params, ref.grad(X[idx], Y[idx], loss="mse"))
        step += 1
print("consistent", opt.steps > 0, np.allclose(model.params, ref.params, rtol=1e-9, atol=1e-12))
# And training goes on from there.
print("resumes", np.isfinite(model.fit(X, Y, loss="mse", optimizer=opt, epochs=1)[0]))
""", ["KeyboardInterrupt True True True", "consistent True True", "resumes True"])


def test_ctrl_c_never_loses_the_loss_of_an_epoch_whose_steps_all_ran():
    """One batch per epoch, so every stop falls between epochs: the losses carried are those
    of every update made (the check once came after an epoch's last step, before its loss was
    kept, and the full-batch fit lost an epoch each time)."""
    expect_lines(INTERRUPT_AFTER + """
N = 32  # one small batch: its replay is too short to look for Ctrl-C itself
rng = np.random.default_rng(0)
X, Y = rng.normal(size=(N, 8)), rng.normal(size=(N, 1))
model = fa.Chain(fa.Dense(8, 64, "tanh"), fa.Dense(64, 1), seed=1)
opt = fa.SGD(1e-3)
interrupt_after(0.5)
try:
    model.fit(X, Y, loss="mse", optimizer=opt, epochs=10**7, batch_size=N, shuffle=False)
    print("not interrupted")
except KeyboardInterrupt as e:
    print("KeyboardInterrupt", opt.steps > 0, len(e.losses) == opt.steps)
""", ["KeyboardInterrupt True True"])


def test_ctrl_c_stops_a_long_replay_and_the_program_still_works():
    expect_lines(INTERRUPT_AFTER + """
# A batch replay of several seconds: tiled (a sum over the batch), and whole (a softmax across
# the batch is not row-local, so it cannot tile).
def net(W, X):
    h = X
    for _ in range(30):
        h = fa.tanh(h @ W)
    return h
tiled = fa.compile(lambda W, X: fa.sum(net(W, X)), fa.spec((256, 256)), fa.spec((None, 256)), wrt=0)
whole = fa.compile(lambda W, X: fa.sum(fa.softmax(net(W, X), axis=0) ** 2), fa.spec((256, 256)),
                   fa.spec((None, 256)), wrt=0)
assert tiled.tile_rows is not None and whole.tile_rows is None
W = np.eye(256) * 0.5
X = np.ones((10000, 256))
for label, f in (("tiled", tiled), ("whole", whole)):
    t0 = interrupt_after(0.5)
    try:
        f.grad(W, X)
        print(label, "not interrupted")
    except KeyboardInterrupt:
        late = time.perf_counter() - t0 - 0.5
        print(label, "KeyboardInterrupt", late < 1.0, file=sys.stdout)
        print(label, f"{late:.3f} s late", file=sys.stderr)
small = np.ones((3, 256)) * 0.1
h = small
for _ in range(30):
    h = np.tanh(h @ W)
print(np.isclose(tiled(W, small), h.sum()), whole.grad(W, small).shape)
""", ["tiled KeyboardInterrupt True", "whole KeyboardInterrupt True", "True (256, 256)"])


@pytest.mark.parametrize("structure,width", [("full", 200), ("kron", 1000)])
def test_ctrl_c_stops_fisher_on_a_large_batch(structure, width):
    # "kron" empirical is one call into Rust over the whole batch: the replay itself must stop.
    kind = "ggn" if structure == "full" else "empirical"
    expect_lines(INTERRUPT_AFTER + f"""
model = fa.Chain(fa.Dense(20, 200, "tanh"), fa.Dense(200, 10), seed=0)
wide = fa.Chain(fa.Dense(20, {width}, "tanh"), fa.Dense({width}, 10), seed=0)
X, Y = np.ones((400000, 20)), np.zeros((400000, 10))
rng = np.random.default_rng(0)
X[:, :10], Y[:, :5] = rng.normal(size=(400000, 10)), rng.normal(size=(400000, 5))
full = "{structure}" == "full"
F = wide.fisher(X[:1000], Y[:1000], kind="{kind}") if full else None
t0 = interrupt_after(0.5)
try:
    wide.fisher(X, Y, kind="{kind}", structure="{structure}", out=F, accumulate=full)
    print("not interrupted")
except KeyboardInterrupt:
    print("KeyboardInterrupt", time.perf_counter() - t0 - 0.5 < 1.0)
# The full sum's tiles add to its upper triangle: F is mirrored even when interrupted.
print(not full or np.array_equal(F, F.T))
print(model.fisher_diag(X[:10], Y[:10]).shape)
""", ["KeyboardInterrupt True", "True", f"({20 * 200 + 200 + 200 * 10 + 10},)"])


def test_an_optimizer_can_be_read_while_fit_runs_on_another_thread():
    """fit holds the optimiser's lock and takes the GIL for a moment every 100 ms to check for
    Ctrl-C; a thread reading the optimiser meanwhile must wait without the GIL, or both would
    wait on each other forever. Run in a subprocess with a timeout."""
    expect_lines("""
        import threading, numpy as np, fastad as fa
        model = fa.Chain(fa.Dense(8, 64, "tanh"), fa.Dense(64, 1), seed=0)
        X, Y = np.ones((4096, 8)), np.ones((4096, 1))
        opt = fa.Adam()
        t = threading.Thread(target=lambda: model.fit(X, Y, optimizer=opt, epochs=20, batch_size=8))
        t.start()
        reads = 0
        while t.is_alive():
            reads += opt.steps >= 0 and opt.lr > 0
        t.join()
        print(opt.steps == 20 * 512, reads > 0)
    """, ["True True"], timeout=60)


# Smaller contract gaps -------------------------------------------------------------------------------

def test_scalar_arguments_take_python_and_numpy_scalars_and_0d_arrays():
    f = fa.compile(lambda x, s: fa.sum(x * s), fa.spec((3,)), fa.spec(()), wrt=(0, 1))
    x = np.array([1.0, 2.0, 3.0])
    for s in (2.0, 2, np.float32(2), np.float64(2), np.int64(2), np.array(2.0),
              np.array(2, np.int32), np.array(2.0, np.float32)):
        assert f(x, s) == 12.0
        gx, gs = f.grad(x, s)
        np.testing.assert_array_equal(gx, [2.0, 2.0, 2.0])
        assert gs.shape == () and gs == 6.0
    g = fa.compile(lambda x: fa.sum(x * x), fa.spec((3,)))
    for c in (1.0, 2, np.float32(0.5), np.array(3.0)):
        np.testing.assert_allclose(g.vjp(x, c), 2 * x * float(c))
    with pytest.raises(ValueError, match=r"cotangent .* has shape \(\); expected \(3,\)"):
        fa.compile(lambda x: x * 2.0, fa.spec((3,))).vjp(x, 1.0)


def test_label_errors_name_the_row_of_the_callers_array():
    K = 3
    labels = np.zeros(3000)
    labels[2999] = 7
    X = np.ones((3000, 4))
    f = fa.compile(lambda W, X, y: fa.cross_entropy(X @ W, y), fa.spec((4, K)),
                   fa.spec((None, 4)), fa.spec((None,)), wrt=0)
    assert f.tile_rows is not None and f.tile_rows < 3000  # the bad row is in a later tile
    with pytest.raises(ValueError, match="label 7 in row 2999 "):
        f.grad(np.zeros((4, K)), X, labels)
    model = fa.Chain(fa.Dense(4, K), seed=0)
    model._TILE_ELEMENTS = 64
    for call in (lambda: model.fisher(X, labels, loss="cross_entropy"),
                 lambda: model.fisher(X, labels, loss="cross_entropy", kind="ggn"),
                 lambda: model.grad(X, labels, loss="cross_entropy"),
                 lambda: model.fit(X, labels, loss="cross_entropy", batch_size=100, seed=1),
                 lambda: model.fit(X, labels, loss="cross_entropy", batch_size=100,
                                   shuffle=False)):
        with pytest.raises(ValueError, match="label 7 in row 2999 "):
            call()


def test_a_forked_child_gets_an_error_not_a_hang_for_a_program_busy_in_the_parent():
    expect_lines("""
        import os, threading, time, numpy as np, fastad as fa
        def net(W, X):
            h = X
            for _ in range(20):
                h = fa.tanh(h @ W)
            return fa.sum(h)
        f = fa.compile(net, fa.spec((256, 256)), fa.spec((None, 256)), wrt=0)
        other = fa.compile(lambda x: fa.sum(x * x), fa.spec((None, 4)))
        W, X = np.eye(256) * 0.5, np.ones((20000, 256))
        f.grad(W, X[:10])  # warm: the pool's workers exist
        t = threading.Thread(target=lambda: f.grad(W, X))
        t.start()
        time.sleep(0.3)  # inside f, holding its lock
        pid = os.fork()
        if pid == 0:
            try:
                f.grad(W, X[:2])
                msg = "no error"
            except RuntimeError as e:
                msg = "RuntimeError " + str("forked" in str(e))
            # Other programs run (inline: the parent's pool threads are not in the child).
            ok = other(np.ones((1000, 4))) == 4000.0 and np.isfinite(f.__class__ is not None)
            os.write(1, f"{msg} {ok}\\n".encode())
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        t.join()
        print("child exit", os.waitstatus_to_exitcode(status), f(W, X[:2]) > 0)
    """, ["RuntimeError True True", "child exit 0 True"], timeout=60)


def test_every_loss_taking_method_has_the_same_default_loss():
    import inspect
    defaults = {name: inspect.signature(getattr(fa.Chain, name)).parameters["loss"].default
                for name in ("loss", "grad", "value_and_grad", "per_sample_grads", "fit",
                             "fisher", "fisher_diag", "per_sample_grad_norms")}
    assert set(defaults.values()) == {"sse"}, defaults


# A product and a network's gradient, saved to stdout (kernel levels must agree on them).
PRODUCT_AND_GRADIENT = """
import sys, warnings
warnings.simplefilter("error")
import numpy as np, fastad as fa
rng = np.random.default_rng(0)
A, B = rng.standard_normal((70, 300)), rng.standard_normal((300, 45))
f = fa.compile(lambda a, b: a @ b, fa.spec((70, 300), np.float64), fa.spec((300, 45), np.float64))
model = fa.Chain(fa.Dense(5, 33, "tanh"), fa.Dense(33, 2), dtype=np.float64, seed=0)
X, Y = rng.standard_normal((3000, 5)), rng.standard_normal((3000, 2))
np.save(sys.stdout.buffer, np.concatenate([f(A, B).ravel(), model.value_and_grad(X, Y)[1]]))
"""


def product_and_gradient(env) -> np.ndarray:
    import io
    r = subprocess.run([sys.executable, "-c", PRODUCT_AND_GRADIENT], capture_output=True, env=env)
    assert r.returncode == 0, r.stderr.decode()
    return np.load(io.BytesIO(r.stdout))


def test_fastad_simd_caps_the_kernels_and_they_agree():
    """FASTAD_SIMD=baseline runs the portable kernels (a fresh process: the level is chosen
    once); a product and a network's gradient agree with the native level's; an unknown value
    warns and is ignored."""
    native_env = {k: v for k, v in os.environ.items() if k != "FASTAD_SIMD"}
    env = dict(native_env, FASTAD_SIMD="baseline")
    r = subprocess.run([sys.executable, "-c", "import fastad as fa; print(fa.instruction_set(),"
                        " fa._narrower_instruction_sets())"], capture_output=True, text=True,
                       env=env)
    assert r.stdout == "baseline []\n", r.stdout + r.stderr
    got, want = product_and_gradient(env), product_and_gradient(native_env)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12)
    bad = subprocess.run([sys.executable, "-W", "always", "-c", "import fastad as fa; "
                          "print(fa.instruction_set() in ('avx512', 'avx2', 'baseline'))"],
                         capture_output=True, text=True, env=dict(os.environ, FASTAD_SIMD="sse9"))
    assert bad.stdout == "True\n" and "FASTAD_SIMD='sse9' is not one of" in bad.stderr, bad


CPUID_CAP_SOURCE = os.path.join(os.path.dirname(__file__), os.pardir, "benches", "cpuid_cap.c")


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="CPUID faulting is Linux on x86-64")
def test_a_cpu_reporting_fewer_features_gets_narrower_kernels_that_agree(tmp_path):
    """Under benches/cpuid_cap.c the process sees a CPU without AVX-512 (then without AVX):
    fastad's own detection, not FASTAD_SIMD, must pick avx2 (then baseline), and the product
    and gradient must agree with the native level's."""
    with open("/proc/cpuinfo") as f:
        if "cpuid_fault" not in f.read().split():
            pytest.skip("this CPU (or its hypervisor) cannot fault CPUID")
    lib = tmp_path / "cpuid_cap.so"
    try:
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", "-o", str(lib),
                        CPUID_CAP_SOURCE], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no C compiler to build the CPUID shim: {e}")
    native_env = {k: v for k, v in os.environ.items() if k != "FASTAD_SIMD"}
    level = [sys.executable, "-c", "import fastad as fa; print(fa.instruction_set())"]
    native = subprocess.run(level, capture_output=True, text=True, env=native_env).stdout.strip()
    want = product_and_gradient(native_env)
    for cap, expected in (("avx2", "avx2" if native in ("avx512", "avx2") else native),
                          ("sse4", "baseline")):
        env = dict(native_env, CPUID_CAP=cap, LD_PRELOAD=str(lib))
        r = subprocess.run(level, capture_output=True, text=True, env=env)
        assert (r.returncode, r.stdout) == (0, expected + "\n"), (cap, r.stdout + r.stderr)
        assert np.allclose(product_and_gradient(env), want, rtol=1e-12, atol=1e-12), cap


def test_the_benchmark_table_names_its_instruction_set_and_caps_shares_of_the_peak(capsys):
    from concurrent.futures import ThreadPoolExecutor
    from fastad import _bench
    assert fa.instruction_set() in ("avx512", "avx2", "baseline")
    with ThreadPoolExecutor(8) as pool:  # a plain read: the same answer from every thread
        assert set(pool.map(lambda _: fa.instruction_set(), range(64))) == {fa.instruction_set()}
    _bench._flops_table("t", [("fastad GEMM (best)", 1.0, 100.0), ("fast row", 1.0, 115.0),
                              ("slow row", 2.0, 100.0)])
    out = capsys.readouterr().out
    assert "115%" not in out and "100%*" in out and " 50% " in out
    assert "measured above the best GEMM" in out
    # A library's faster product is the one the shares are of.
    _bench._flops_table("t", [("fastad GEMM (best)", 1.0, 100.0), ("NumPy GEMM (best)", 1.0, 200.0),
                              ("row", 1.0, 100.0)])
    out = capsys.readouterr().out
    assert out.count(" 50% ") == 2 and "100% " in out
    root = os.path.join(os.path.dirname(__file__), "..")
    assert "MIT License" in open(os.path.join(root, "LICENSE")).read()
    src = open(os.path.join(root, "python", "fastad", "_bench.py")).read()
    assert "fa.instruction_set()" in src.split("\ndef run(")[1]


def test_a_call_that_fails_leaves_out_as_it_was():
    # The output (a product) is written straight into out= once every step before it has run;
    # a bad label in an earlier step must raise before out is touched, and a good call after
    # it fills out with the product.
    x, idx, w = np.arange(12.0).reshape(4, 3), np.array([0.0, 2, 1, 0]), np.ones((1, 5))
    f = fa.compile(lambda x, i, w: fa.reshape(fa.take_along_rows(x, i), (-1, 1)) @ w, x, idx, w)
    out = np.full((4, 5), 7.0)
    with pytest.raises(ValueError, match="label 5 in row 1"):
        f(x, np.array([0.0, 5, 1, 0]), w, out=out)
    assert np.all(out == 7.0)
    f(x, idx, w, out=out)
    np.testing.assert_array_equal(out, np.repeat(x[np.arange(4), idx.astype(int)][:, None], 5, 1))
