"""Chains pickle (and copy) through the model file's form: bit-identical copies that compile
their own programs; custom activations and tampered pickles are refused."""
import pickle

import numpy as np
import pytest

import fastad as fa


def _model():
    return fa.Chain(fa.Dense(4, 8, "tanh"), fa.Dense(8, 6, "sigmoid"), fa.Dense(6, 3), seed=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_pickled_model_gives_bit_identical_results(dtype):
    model = fa.Chain(fa.Dense(3, 7, "gelu"), fa.Dense(7, 5, "softplus", use_bias=False),
                     fa.Dense(5, 2), dtype=dtype, seed=3)
    X = np.random.default_rng(1).standard_normal((11, 3)).astype(dtype)
    Y = np.random.default_rng(2).standard_normal((11, 2)).astype(dtype)
    copy = pickle.loads(pickle.dumps(model))
    assert repr(copy) == repr(model) and copy.params.dtype == dtype
    assert copy.params is not model.params and np.array_equal(copy.params, model.params)
    assert np.array_equal(copy(X), model(X))
    v0, g0 = model.value_and_grad(X, Y, loss="mse")
    v1, g1 = copy.value_and_grad(X, Y, loss="mse")
    assert v0 == v1 and np.array_equal(g0, g1)
    copy.params[0] += 1.0  # the copy owns its parameters
    assert copy.params[0] != model.params[0]


def test_pickling_keeps_no_compiled_program_and_refuses_custom_activations():
    model = _model()
    model(np.zeros((2, 4)))  # compiles the forward program
    assert model._programs
    assert not pickle.loads(pickle.dumps(model))._programs
    with pytest.raises(pickle.PicklingError, match="layer 0 .*custom activation"):
        pickle.dumps(fa.Chain(fa.Dense(2, 3, fa.sin), fa.Dense(3, 1)))


def test_a_tampered_pickle_raises_format_error_not_a_wrong_model():
    data = pickle.dumps(_model())
    P = _model().n_params
    bad_count = data.replace(f'"n_params": {P}'.encode(), f'"n_params": {P + 1}'.encode())
    assert bad_count != data
    with pytest.raises(fa.FormatError, match="a pickled fa.Chain: header says"):
        pickle.loads(bad_count)
    bad_layer = data.replace(b'"in": 8', b'"in": 9')
    with pytest.raises(fa.FormatError, match="inconsistent layers"):
        pickle.loads(bad_layer)
    # A pickle is a call of fastad's own rebuilding function: any arguments are checked.
    from fastad._chain import _unpickled
    header, params = _model().__reduce__()[1]
    with pytest.raises(fa.FormatError, match="a header of type int"):
        _unpickled(3, params)
    with pytest.raises(fa.FormatError, match=f"parameters of {len(params) - 8} bytes"):
        _unpickled(header, params[:-8])
    with pytest.raises(fa.FormatError, match="not valid JSON"):
        _unpickled(b"{", params)
