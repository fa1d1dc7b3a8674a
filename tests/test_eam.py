"""Seed 003: f(x) = ρ² + ρ³ + ρ⁴/4 with ρ = Σ exp(−3(xᵢ+1)), against its hand-written gradient."""
import numpy as np
import pytest

import fastad as fa


def eam(x):
    rho = fa.sum(fa.exp(-3.0 * (x + 1.0)))
    return rho**2 + rho**3 + 0.25 * rho**4


def eam_numpy(x):
    rho = np.sum(np.exp(-3.0 * (x + 1.0)))
    return rho**2 + rho**3 + 0.25 * rho**4


def eam_grad_by_hand(x):
    rho = np.sum(np.exp(-3.0 * (x + 1.0)))
    return -3.0 * np.exp(-3.0 * (x + 1.0)) * (2 * rho + 3 * rho**2 + rho**3)


@pytest.mark.parametrize("n", [1, 100, 10_000])
def test_eam_matches_the_analytic_gradient(n):
    x = np.random.default_rng(n).random(n)
    f = fa.compile(eam, fa.spec((n,), np.float64))
    g = np.empty(n)
    v = f.value_and_grad(x, out=g)
    assert abs(v - eam_numpy(x)) <= 1e-12 * abs(eam_numpy(x))
    want = eam_grad_by_hand(x)
    assert np.max(np.abs(g - want)) <= 1e-12 * np.max(np.abs(want))
    assert f(x) == v
    assert np.array_equal(f.grad(x), g)


def test_eam_float32_agrees_with_float64():
    x = np.random.default_rng(1).random(100)
    f64 = fa.compile(eam, fa.spec((100,), np.float64))
    f32 = fa.compile(eam, fa.spec((100,), np.float32))
    v64, g64 = f64.value_and_grad(x)
    v32, g32 = f32.value_and_grad(x.astype(np.float32))
    assert g32.dtype == np.float32 and isinstance(v32, float)
    assert abs(v32 - v64) <= 1e-5 * abs(v64)
    assert np.max(np.abs(g32 - g64)) <= 1e-5 * np.max(np.abs(g64))
