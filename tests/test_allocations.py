"""Replays allocate nothing: no native heap allocation, and no NumPy array."""
import tracemalloc

import numpy as np

import fastad as fa

NUMPY_DOMAIN = np.lib.tracemalloc_domain


def eam(x):
    rho = fa.sum(fa.exp(-3.0 * (x + 1.0)))
    return rho**2 + rho**3 + 0.25 * rho**4


def test_value_and_grad_with_out_allocates_nothing():
    f = fa.compile(eam, fa.spec((100,), np.float64))
    x, g = np.random.rand(100), np.empty(100)
    f.value_and_grad(x, out=g)  # warm-up
    before = fa.allocation_count()
    for _ in range(1000):
        f.value_and_grad(x, out=g)
    assert fa.allocation_count() == before


def test_no_numpy_arrays_are_allocated():
    f = fa.compile(eam, fa.spec((100,), np.float64))
    x, g = np.random.rand(100), np.empty(100)
    f.value_and_grad(x, out=g)
    # The NumPy domain sees every array data buffer NumPy allocates; a replay into `out` makes none.
    tracemalloc.start()
    try:
        f.value_and_grad(x, out=g)
        snap0 = tracemalloc.take_snapshot()
        for _ in range(1000):
            f.value_and_grad(x, out=g)
        snap1 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    flt = [tracemalloc.DomainFilter(True, NUMPY_DOMAIN)]
    new = snap1.filter_traces(flt).compare_to(snap0.filter_traces(flt), "lineno")
    assert sum(s.count_diff for s in new if s.count_diff > 0) == 0
    # And the check can fail: the allocating form does allocate NumPy arrays.
    tracemalloc.start()
    try:
        kept = [f.grad(x) for _ in range(10)]
        snap2 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(snap2.filter_traces(flt).traces) >= 10
    del kept


def test_batched_programs_allocate_only_when_the_batch_grows():
    def loss(W, b, X, y):
        return fa.mean((fa.tanh(X @ W.T + b) - y) ** 2)
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(4, 3)), rng.normal(size=4)
    f = fa.compile(loss, W, b, fa.spec((None, 3)), fa.spec((None, 4)), wrt=(0, 1))
    gW, gb = np.empty_like(W), np.empty_like(b)
    big = (rng.normal(size=(500, 3)), rng.normal(size=(500, 4)))
    small = (rng.normal(size=(7, 3)), rng.normal(size=(7, 4)))
    f.value_and_grad(W, b, *big, out=(gW, gb))
    before = fa.allocation_count()
    for _ in range(200):
        f.value_and_grad(W, b, *small, out=(gW, gb))
        f.value_and_grad(W, b, *big, out=(gW, gb))
    assert fa.allocation_count() == before
    f.value_and_grad(W, b, rng.normal(size=(900, 3)), rng.normal(size=(900, 4)), out=(gW, gb))
    assert fa.allocation_count() > before  # a larger batch grows the buffers, once


def test_vjp_and_value_allocate_nothing():
    f = fa.compile(lambda W, X: fa.tanh(X @ W.T), fa.spec((2, 3)), fa.spec((None, 3)), wrt=0)
    rng = np.random.default_rng(1)
    W, X, cot = rng.normal(size=(2, 3)), rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    gW, val = np.empty((2, 3)), np.empty((50, 2))
    f.vjp(W, X, cot, out=gW, value_out=val)
    f(W, X, out=val)
    before = fa.allocation_count()
    for _ in range(1000):
        f.vjp(W, X, cot, out=gW, value_out=val)
        f(W, X, out=val)
    assert fa.allocation_count() == before
