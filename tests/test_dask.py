"""fastad over Dask (issue 15): a pickled model on a worker process gives bit-identical results,
and fastad.dask's sums over row chunks equal the single-process methods, on a real two-process
LocalCluster and on Dask's local threads; a killed worker's work is redone; Ctrl-C stops a
computation. (Pickling itself: test_pickle.py.)"""
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel, errors_in_threads

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")
import dask  # noqa: E402
import fastad.dask as fd  # noqa: E402

REL = 1e-12  # float64: the sums differ only in their order


def _model(K=3, dtype=np.float64):
    return fa.Chain(fa.Dense(4, 8, "tanh"), fa.Dense(8, 6, "sigmoid"), fa.Dense(6, K),
                    dtype=dtype, seed=0)


def _data(n, K=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    return X, {"mse": rng.standard_normal((n, K)), "sse": rng.standard_normal((n, K)),
               "cross_entropy": rng.integers(0, K, n)}


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each; closed after this module, so that the other
    tests' default scheduler is untouched."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture
def local_threads():
    with dask.config.set(scheduler="threads"):
        yield


# Models travel -----------------------------------------------------------------------------


def test_a_model_on_a_worker_process_gives_bit_identical_results(client):
    model = _model()
    X, Y = _data(50)
    out = client.submit(lambda m, x: m(x), model, X).result()
    v, g = client.submit(lambda m, x, y: m.value_and_grad(x, y, loss="mse"), model, X,
                         Y["mse"]).result()
    assert np.array_equal(out, model(X))
    v0, g0 = model.value_and_grad(X, Y["mse"], loss="mse")
    assert v == v0 and np.array_equal(g, g0)


# Sums over chunks equal the single-process ones ---------------------------------------------


def _check_fisher(model, X, Y, chunks, loss, kind, structure, y_chunks=None):
    """fastad.dask's Fisher of X in chunks of `chunks` rows (and Y in its own chunks, or as
    NumPy) against the model's own."""
    Yd = Y if y_chunks is None else da.from_array(Y, chunks=y_chunks)
    got = fd.fisher(model, da.from_array(X, chunks=(chunks, 4)), Yd, loss=loss, kind=kind,
                    structure=structure)
    want = model.fisher(X, Y, loss=loss, kind=kind, structure=structure)
    if structure == "kron":
        assert len(got[0]) == len(want[0]) == len(got[1]) == len(want[1]) == 3
        for g, w in zip(got[0] + got[1], want[0] + want[1]):
            assert g.dtype == model.dtype
            assert_close_rel(g, w, REL, f"{loss} {kind} kron")
    else:
        assert got.dtype == model.dtype
        assert_close_rel(got, want, REL, f"{loss} {kind} {structure}")


@pytest.mark.parametrize("chunks", [17, 1])
@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_fisher_on_the_cluster_equals_the_single_process_one(client, chunks, structure):
    model = _model()
    X, Y = _data(40 if chunks == 1 else 103)
    for loss in ("mse", "cross_entropy"):
        for kind in ("empirical", "ggn"):
            # Y as a Dask array of other chunks than X's, and as NumPy.
            _check_fisher(model, X, Y[loss], chunks, loss, kind, structure,
                          y_chunks=25 if kind == "ggn" else None)


@pytest.mark.parametrize("chunks", [17, 1])
def test_value_and_grad_on_the_cluster_is_the_full_batch_one(client, chunks):
    model = _model()
    X, Y = _data(40 if chunks == 1 else 103)
    Xd = da.from_array(X, chunks=(chunks, 4))
    for loss in ("sse", "mse", "cross_entropy"):
        for l2 in (0.0, 0.3):
            value, grad = fd.value_and_grad(model, Xd, da.from_array(Y[loss], chunks=30),
                                            loss=loss, l2=l2)
            v0, g0 = model.value_and_grad(X, Y[loss], loss=loss, l2=l2)
            assert abs(value - v0) <= REL * abs(v0), (loss, l2)
            assert grad.dtype == model.dtype
            assert_close_rel(grad, g0, REL, f"{loss} l2={l2}")


def test_value_and_grad_of_a_custom_loss_needs_its_reduction(client):
    model = _model(K=1)
    X, _ = _data(60)
    Xd = da.from_array(X, chunks=7)
    with pytest.raises(ValueError, match="reduction='sum' or reduction='mean'"):
        fd.value_and_grad(model, Xd, loss=lambda pred: fa.mean(pred * pred))
    value, grad = fd.value_and_grad(model, Xd, loss=lambda pred: fa.mean(pred * pred),
                                    reduction="mean")
    v0, g0 = model.value_and_grad(X, loss=lambda pred: fa.mean(pred * pred))
    assert abs(value - v0) <= REL * abs(v0)
    assert_close_rel(grad, g0, REL, "custom mean")
    with pytest.raises(ValueError, match="'mse' is a mean; reduction='sum' contradicts"):
        fd.value_and_grad(model, Xd, np.zeros(60), loss="mse", reduction="sum")


@pytest.mark.parametrize("chunks", [17, 1])
def test_per_sample_grad_norms_on_the_cluster_is_a_dask_array(client, chunks):
    model = _model()
    X, Y = _data(40 if chunks == 1 else 103)
    norms = fd.per_sample_grad_norms(model, da.from_array(X, chunks=(chunks, 4)),
                                     Y["cross_entropy"], loss="cross_entropy")
    assert isinstance(norms, da.Array) and norms.shape == (X.shape[0],)
    assert norms.chunks[0] == da.from_array(X, chunks=(chunks, 4)).chunks[0]
    want = model.per_sample_grad_norms(X, Y["cross_entropy"], loss="cross_entropy")
    assert_close_rel(norms.compute(), want, REL, "norms")


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
@pytest.mark.parametrize("subset,hessian", [("all", "full"), ("all", "kron"),
                                            ("last_layer", "diag"), ("last_layer", "full")])
def test_laplace_fit_on_dask_arrays_equals_the_single_process_fit(client, likelihood, subset,
                                                                  hessian):
    model = _model()
    X, Y = _data(103)
    Y = Y["mse"] if likelihood == "regression" else Y["cross_entropy"]
    for curvature in ("ggn", "ef"):
        one = fa.Laplace(model, likelihood, subset=subset, hessian=hessian, curvature=curvature)
        many = fa.Laplace(model, likelihood, subset=subset, hessian=hessian, curvature=curvature)
        one.fit(X, Y)
        many.fit(da.from_array(X, chunks=(13, 4)), da.from_array(Y, chunks=20))
        assert many._state().n == X.shape[0]
        lml = one.log_marginal_likelihood()
        assert abs(many.log_marginal_likelihood() - lml) <= REL * abs(lml)
        assert_close_rel(many.posterior_variance, one.posterior_variance, 1e-11, curvature)
        Xs = X[:9]
        assert_close_rel(many.functional_variance(Xs), one.functional_variance(Xs), 1e-11,
                         curvature)


def test_the_default_local_scheduler_gives_the_same_sums(local_threads):
    model = _model()
    X, Y = _data(103)
    Xd = da.from_array(X, chunks=(10, 4))
    _check_fisher(model, X, Y["mse"], 10, "mse", "ggn", "full")
    _check_fisher(model, X, Y["cross_entropy"], 10, "cross_entropy", "empirical", "kron")
    value, grad = fd.value_and_grad(model, Xd, Y["mse"], loss="mse")
    v0, g0 = model.value_and_grad(X, Y["mse"], loss="mse")
    assert abs(value - v0) <= REL * abs(v0)
    assert_close_rel(grad, g0, REL, "vg")
    la = fa.Laplace(model, hessian="kron").fit(Xd, Y["mse"])
    lb = fa.Laplace(model, hessian="kron").fit(X, Y["mse"])
    assert abs(la.log_marginal_likelihood() - lb.log_marginal_likelihood()) <= REL * abs(
        lb.log_marginal_likelihood())


def test_calls_from_several_threads_at_once(local_threads):
    """Eight threads at once, two on each of fastad.dask's functions and on pickling the
    shared model: every result equals the one computed alone."""
    model = _model()
    X, Y = _data(200)
    Xd, y = da.from_array(X, chunks=(9, 4)), Y["mse"]
    calls = [
        (lambda: fd.fisher(model, Xd, y, loss="mse"), model.fisher(X, y, loss="mse")),
        (lambda: fd.value_and_grad(model, Xd, y, loss="mse")[1],
         model.value_and_grad(X, y, loss="mse")[1]),
        (lambda: fd.per_sample_grad_norms(model, Xd, y, loss="mse").compute(),
         model.per_sample_grad_norms(X, y, loss="mse")),
        (lambda: pickle.loads(pickle.dumps(model))(X), model(X)),
    ]
    results = [None] * 8

    def work(i):
        results[i] = calls[i % 4][0]()
    assert not errors_in_threads(work, range(8))
    for i, r in enumerate(results):
        assert_close_rel(r, calls[i % 4][1], REL, f"call {i % 4}")


# Bad input: clear errors before anything runs -------------------------------------------------


def test_bad_input_is_refused_up_front(local_threads):
    model = _model()
    X, Y = _data(30)
    Xd = da.from_array(X, chunks=7)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 4\).*\(30, 5\)"):
        fd.fisher(model, da.zeros((30, 5), chunks=7), Y["mse"], loss="mse")
    with pytest.raises(ValueError, match=r"targets Y must have 30 rows like X; got shape \(29, 3\)"):
        fd.value_and_grad(model, Xd, Y["mse"][:29], loss="mse")
    with pytest.raises(ValueError, match=r"loss 'mse' needs targets Y of shape \(N, 3\).*\(30, 2\)"):
        fd.fisher(model, Xd, Y["mse"][:, :2], loss="mse")
    with pytest.raises(ValueError, match="loss 'mse' needs targets"):
        fd.fisher(model, Xd, loss="mse")
    with pytest.raises(ValueError, match='structure must be "full", "diag" or "kron"'):
        fd.fisher(model, Xd, Y["mse"], loss="mse", structure="block")
    with pytest.raises(ValueError, match="split_every must be an integer of at least 2"):
        fd.fisher(model, Xd, Y["mse"], loss="mse", split_every=1)
    unknown = Xd[Xd[:, 0] > -np.inf]  # the same rows, in chunks of unknown sizes
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes\(\)"):
        fd.fisher(model, unknown, Y["mse"], loss="mse")
    # Without targets to align, unknown sizes are fine: N is counted chunk by chunk.
    value, _ = fd.value_and_grad(model, unknown)
    assert abs(value - model.value_and_grad(X)[0]) <= REL * abs(value)
    with pytest.raises(TypeError, match="fastad.dask takes a fa.Chain"):
        fd.fisher(fa.compile(lambda x: fa.sum(x), fa.spec((3,))), Xd)


def test_a_bad_label_is_named_by_its_row_in_the_whole_array(client):
    model = _model()
    X, Y = _data(40)
    labels = Y["cross_entropy"].astype(np.float64)
    labels[33] = 7
    with pytest.raises(ValueError, match="label 7 in row 33 is not a class index in 0..3"):
        fd.fisher(model, da.from_array(X, chunks=(10, 4)), labels, loss="cross_entropy")


def test_without_dask_the_module_says_how_to_install_it():
    code = textwrap.dedent("""
        import sys
        sys.modules["dask"] = None  # as if Dask were not installed
        try:
            import fastad.dask
        except ImportError as e:
            print(e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'fastad[dask]'" in r.stdout, r.stdout + r.stderr


# Failures: a killed worker, Ctrl-C ------------------------------------------------------------


def test_a_worker_killed_mid_computation_gives_the_same_result_or_a_clear_error(client):
    """SIGKILL to one worker process while the chunks are being summed: the nanny starts a new
    worker and the scheduler recomputes what was lost, so the sum is whole, or the computation
    fails with an error; never a partial sum."""
    model = fa.Chain(fa.Dense(10, 64, "tanh"), fa.Dense(64, 20, "tanh"), fa.Dense(20, 1),
                     seed=0)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((24000, 10)), rng.standard_normal((24000, 1))
    want = model.fisher(X, Y, loss="mse")
    pids = client.run(os.getpid)
    result = {}

    def compute():
        try:
            result["F"] = fd.fisher(model, da.from_array(X, chunks=(1000, 10)), Y, loss="mse")
        except Exception as e:  # noqa: BLE001 - a clear error is an allowed outcome
            result["error"] = e
    t = threading.Thread(target=compute)
    t.start()
    deadline = time.monotonic() + 60
    while not client.processing() or not any(client.processing().values()):
        assert time.monotonic() < deadline, "no task started"
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(next(iter(pids.values())), 9)
    t.join(240)
    assert not t.is_alive()
    if "error" in result:
        assert isinstance(result["error"], distributed.scheduler.KilledWorker), result["error"]
    else:
        assert_close_rel(result["F"], want, REL, "after a killed worker")
    client.wait_for_workers(2, timeout=60)


def test_ctrl_c_stops_a_computation_on_the_local_scheduler():
    """SIGINT 1 s into 100 chunks: KeyboardInterrupt at once, and the next call waits at most
    for the chunks that were running (Dask's threads take one task at a time), not for the
    rest."""
    code = textwrap.dedent("""
        import os, signal, threading, time
        import dask, dask.array as da, numpy as np, fastad as fa, fastad.dask as fd
        model = fa.Chain(fa.Dense(20, 50, "tanh"), fa.Dense(50, 10), seed=0)
        X, Y = da.ones((400000, 20), chunks=4000), da.zeros((400000, 10), chunks=4000)
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.perf_counter()
        try:
            with dask.config.set(scheduler="threads"):
                fd.fisher(model, X, Y)
            print("not interrupted")
        except KeyboardInterrupt:
            print("KeyboardInterrupt", time.perf_counter() - t0 < 2.0)
        t1 = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            fd.value_and_grad(model, X[:100], Y[:100])
        print("next call", time.perf_counter() - t1 < 3.0)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == ["KeyboardInterrupt True", "next call True"], r.stdout


def test_ctrl_c_stops_a_computation_on_a_cluster_and_the_client_still_works():
    code = textwrap.dedent("""
        import os, signal, threading, time
        import dask.array as da, numpy as np, fastad as fa, fastad.dask as fd
        from dask.distributed import Client, LocalCluster
        if __name__ == "__main__":
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster):
                model = fa.Chain(fa.Dense(20, 50, "tanh"), fa.Dense(50, 10), seed=0)
                X, Y = da.ones((400000, 20), chunks=4000), da.zeros((400000, 10), chunks=4000)
                threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
                t0 = time.perf_counter()
                try:
                    fd.fisher(model, X, Y)
                    print("not interrupted")
                except KeyboardInterrupt:
                    print("KeyboardInterrupt", time.perf_counter() - t0 < 3.0)
                x, y = np.ones((100, 20)), np.zeros((100, 10))
                value, _ = fd.value_and_grad(model, da.from_array(x, chunks=30), y)
                want = model.value_and_grad(x, y)[0]
                print("next call", abs(value - want) <= 1e-12 * abs(want))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == ["KeyboardInterrupt True", "next call True"], r.stdout


def test_a_sum_too_large_for_memory_raises_memory_error_and_the_client_survives(client):
    """A full Fisher of 800,000 parameters would be 5 TB: MemoryError from the worker's
    partial sum, on the cluster and (in a subprocess, where a crash could not take pytest
    down) on local threads; afterwards both still compute."""
    wide = fa.Chain(fa.Dense(1, 400_000), seed=0)
    X = da.ones((4, 1), chunks=2)
    with pytest.raises(MemoryError):
        fd.fisher(wide, X)
    model = _model(K=1)
    x = np.ones((5, 4))
    assert abs(fd.value_and_grad(model, da.from_array(x, chunks=2))[0]
               - model.value_and_grad(x)[0]) <= REL * abs(model.value_and_grad(x)[0])
    code = textwrap.dedent("""
        import dask, dask.array as da, numpy as np, fastad as fa, fastad.dask as fd
        with dask.config.set(scheduler="threads"):
            try:
                fd.fisher(fa.Chain(fa.Dense(1, 400_000), seed=0), da.ones((4, 1), chunks=2))
                print("no error")
            except MemoryError:
                print("MemoryError")
            m = fa.Chain(fa.Dense(2, 1), seed=0)
            print(fd.fisher(m, da.ones((4, 2), chunks=2)).shape)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == ["MemoryError", "(3, 3)"], r.stdout
