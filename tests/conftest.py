"""Shared helpers: central finite differences in float64, reference checks, calls from many
threads at once, a 1-and-2-threads fixture."""
import threading

import numpy as np
import pytest

import fastad as fa


def numeric_vjp(f, args, wrt, cotangent, h=1e-6):
    """Central finite differences of <cotangent, f(*args)> with respect to args[w] for w in wrt.

    `f` is evaluated by the caller's function (the compiled program's value), so this checks the
    reverse sweep against the forward one; forward values are checked against NumPy separately.
    """
    grads = []
    for w in wrt:
        x = np.array(args[w], dtype=np.float64)
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            vals = []
            for step in (h, -h):
                x[i] = old + step
                a = list(args)
                a[w] = x.copy()
                vals.append(np.sum(cotangent * np.asarray(f(*a))))
            x[i] = old
            g[i] = (vals[0] - vals[1]) / (2 * h)
        grads.append(g)
    return grads


def assert_close_rel(actual, expected, rel, what=""):
    """Norm-wise relative error at most `rel` (absolute for a zero reference)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.linalg.norm((actual - expected).ravel())
    scale = max(np.linalg.norm(expected.ravel()), 1.0)
    assert err <= rel * scale, f"{what}: relative error {err / scale:.3e} > {rel:.1e}"


def errors_in_threads(work, args):
    """Runs ``work(a)`` for each a of `args`, each on its own thread, all at once; returns the
    exceptions that escaped them (an empty list when every call returned)."""
    errors = []

    def run(a):
        try:
            work(a)
        except BaseException as e:  # noqa: BLE001 - returned to the test
            errors.append(e)
    threads = [threading.Thread(target=run, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.fixture(params=[1, 2])
def threads(request):
    """Runs a test on 1 and on 2 threads, restoring the thread count after."""
    old = fa.get_num_threads()
    fa.set_num_threads(request.param)
    yield request.param
    fa.set_num_threads(old)
