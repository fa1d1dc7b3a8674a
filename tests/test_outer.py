"""fa.outer, fa.outer_sum, fa.outer_diag against NumPy einsum, with out= checks."""
import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
@pytest.mark.parametrize("n,p", [(0, 3), (3, 0), (1, 1), (7, 5), (128, 97), (3, 300)])
def test_outer_products_match_einsum(n, p, dtype, tol, threads):
    G = np.random.default_rng(n + p).standard_normal((n, p)).astype(dtype)
    G64 = G.astype(np.float64)
    H = fa.outer(G)
    assert H.dtype == dtype and H.shape == (n, p, p)
    assert_close_rel(H, np.einsum("bi,bj->bij", G64, G64), tol)
    iu = np.triu_indices(p)
    packed = fa.outer(G, packed=True)
    assert packed.shape == (n, p * (p + 1) // 2)
    assert_close_rel(packed, np.einsum("bi,bj->bij", G64, G64)[:, iu[0], iu[1]], tol)
    assert_close_rel(fa.outer_sum(G), np.einsum("bi,bj->ij", G64, G64), tol)
    assert_close_rel(fa.outer_diag(G), np.einsum("bi,bi->i", G64, G64), tol)


@pytest.mark.parametrize("n,p", [(5000, 65), (700, 300)])
def test_outer_sum_is_symmetric_and_independent_of_the_thread_count(n, p):
    """One triangle is computed and mirrored, and a narrow G's samples are split into a fixed
    number of parts: the same bits on 1 and on 2 threads, and against einsum; accumulating adds
    to the upper triangle of a symmetric out."""
    G = np.random.default_rng(p).standard_normal((n, p)).astype(np.float32)
    old = fa.get_num_threads()
    try:
        sums = []
        for t in (1, 2):
            fa.set_num_threads(t)
            sums.append(fa.outer_sum(G))
    finally:
        fa.set_num_threads(old)
    assert np.array_equal(sums[0], sums[1])
    assert np.array_equal(sums[0], sums[0].T)
    G64 = G.astype(np.float64)
    assert_close_rel(sums[0], G64.T @ G64, 1e-5)
    F = sums[0].copy()
    fa.outer_sum(G, out=F, accumulate=True)
    assert_close_rel(F, 2 * (G64.T @ G64), 1e-5)


def test_out_arrays_are_filled_and_returned_without_allocating():
    G = np.random.default_rng(0).standard_normal((128, 97)).astype(np.float32)
    H = np.empty((128, 97, 97), np.float32)
    F, d = np.empty((97, 97), np.float32), np.empty(97, np.float32)
    for _ in range(3):
        assert fa.outer(G, out=H) is H
        fa.outer_sum(G, out=F)
        fa.outer_diag(G, out=d)
    before = fa.allocation_count()
    for _ in range(200):
        fa.outer(G, out=H)
        fa.outer_sum(G, out=F)
        fa.outer_diag(G, out=d)
    assert fa.allocation_count() == before
    assert_close_rel(H[5], np.outer(G[5], G[5]), 1e-6)


def test_bad_arguments_give_clear_errors_and_write_nothing():
    G = np.ones((4, 3))
    H = np.full((4, 3, 2), 7.0)
    with pytest.raises(ValueError, match=r"out has shape \(4, 3, 2\); expected \(4, 3, 3\)"):
        fa.outer(G, out=H)
    assert np.all(H == 7.0)
    with pytest.raises(ValueError, match=r"expected \(4, 6\)"):
        fa.outer(G, out=np.empty((4, 9)), packed=True)
    with pytest.raises(TypeError, match="float64"):
        fa.outer_sum(G, out=np.empty((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(N, P\).*\(12,\)"):
        fa.outer(np.ones(12))
    with pytest.raises(TypeError, match="real array"):
        fa.outer_diag(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="C-contiguous"):
        fa.outer_sum(G, out=np.empty((3, 6))[:, ::2])
    with pytest.raises(ValueError, match="shares memory"):
        fa.outer_diag(G, out=G[0])
    # Lists and integer arrays are converted to float64.
    assert_close_rel(fa.outer_sum([[1, 2], [3, 4]]), np.array([[10.0, 14.0], [14.0, 20.0]]), 0)
