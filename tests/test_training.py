"""Optimisers against NumPy reference updates, Chain.fit against the same loop written in Python,
and the model file format (round trips, corrupt and hostile files, atomic saves)."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fastad as fa


# NumPy reference optimisers, written from the published update rules. ---------------------------

def sgd_ref(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    p, buf = p.copy(), None
    for g in grads:
        v = g + weight_decay * p
        if momentum:
            buf = v.copy() if buf is None else momentum * buf + v
            v = v + momentum * buf if nesterov else buf
        p = p - lr * v
    return p


def adam_ref(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


OPTIMIZERS = [
    (lambda: fa.SGD(0.1), lambda p, g: sgd_ref(p, g, 0.1)),
    (lambda: fa.SGD(0.05, momentum=0.9), lambda p, g: sgd_ref(p, g, 0.05, 0.9)),
    (lambda: fa.SGD(0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
     lambda p, g: sgd_ref(p, g, 0.05, 0.8, True, 0.1)),
    (lambda: fa.Adam(), lambda p, g: adam_ref(p, g, 1e-3)),
    (lambda: fa.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     lambda p, g: adam_ref(p, g, 0.01, 0.8, 0.99, 1e-6, 0.1)),
    (lambda: fa.AdamW(0.01, weight_decay=0.1),
     lambda p, g: adam_ref(p, g, 0.01, weight_decay=0.1, decoupled=True)),
]


@pytest.mark.parametrize("make,ref", OPTIMIZERS)
def test_optimizer_steps_match_numpy_reference(make, ref):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=13)
    grads = [rng.normal(size=13) for _ in range(7)]
    opt, p = make(), p0.copy()
    for k, g in enumerate(grads, start=1):
        opt.step(p, g)
        np.testing.assert_allclose(p, ref(p0, grads[:k]), rtol=1e-13, atol=1e-15)
    assert opt.steps == 7
    # float32 follows the same rule.
    opt32, p32 = make(), p0.astype(np.float32)
    for g in grads:
        opt32.step(p32, g.astype(np.float32))
    np.testing.assert_allclose(p32, ref(p0, grads), rtol=2e-5, atol=2e-6)


def seed002_data(n=128, seed=0):
    """Seed 002's toy regression data: x ~ U(0, 8), y = sin(x) + 0.3·N(0, 1)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 8, (n, 1))
    return X, np.sin(X) + 0.3 * rng.standard_normal((n, 1))


def seed002_model(dtype=np.float64):
    return fa.Chain(fa.Dense(1, 32, "sigmoid"), fa.Dense(32, 1), dtype=dtype, seed=0)


@pytest.mark.parametrize("shuffle,batch_size", [(False, 1), (True, 1), (True, 5), (False, 200)])
def test_fit_equals_the_same_loop_in_python(shuffle, batch_size, threads):
    X, Y = seed002_data(23)
    fitted, manual = seed002_model(), seed002_model()
    opt = fa.Adam(0.01)
    hist = fitted.fit(X, Y, loss="mse", optimizer=opt, epochs=4, batch_size=batch_size,
                      shuffle=shuffle, seed=7, l2=0.01)
    opt2, g = fa.Adam(0.01), np.empty(manual.n_params)
    want = []
    for epoch in range(4):
        order = fa.epoch_order(23, 7, epoch) if shuffle else np.arange(23)
        total = 0.0
        for s in range(0, 23, batch_size):
            rows = order[s:s + batch_size]
            total += manual.value_and_grad(X[rows], Y[rows], loss="mse", l2=0.01, out=g) * len(rows)
            opt2.step(manual.params, g)
        want.append(total / 23)
    np.testing.assert_array_equal(fitted.params, manual.params)
    np.testing.assert_allclose(hist, want, rtol=1e-15)
    assert opt.steps == opt2.steps == 4 * -(-23 // batch_size)


def test_epoch_orders_are_seeded_permutations():
    a = fa.epoch_order(50, 3, 0)
    assert sorted(a) == list(range(50)) and a.dtype == np.int64
    assert not np.array_equal(a, fa.epoch_order(50, 3, 1))
    assert not np.array_equal(a, fa.epoch_order(50, 4, 0))
    np.testing.assert_array_equal(a, fa.epoch_order(50, 3, 0))


def test_training_on_seed_002_reduces_the_loss():
    X, Y = seed002_data()
    model = seed002_model(np.float32)
    before = model.loss(X, Y, loss="mse")
    hist = model.fit(X, Y, loss="mse", optimizer=fa.Adam(), epochs=200, batch_size=1,
                     shuffle=True, l2=0.01)
    assert hist.shape == (200,) and hist.dtype == np.float64
    after = model.loss(X, Y, loss="mse")
    assert after < 0.5 * before and hist[-1] < 0.5 * hist[0], (before, after, hist[[0, -1]])
    # The fit explains most of the variance of sin(x) (noise variance 0.09).
    assert after < 0.2


def test_fit_allocates_nothing_per_step():
    X, Y = seed002_data()
    model, opt = seed002_model(np.float32), fa.Adam()
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    model.fit(X32, Y32, optimizer=opt, epochs=1, batch_size=1)  # compiles; creates the state
    counts = []
    for epochs in (1, 30):
        before = fa.allocation_count()
        model.fit(X32, Y32, optimizer=opt, epochs=epochs, batch_size=1)
        counts.append(fa.allocation_count() - before)
    # 30 epochs × 128 steps allocate what 1 epoch does: the per-call buffers, nothing per step.
    assert counts[0] == counts[1], counts


def test_callback_stops_training_and_progress_bar_runs(capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):  # the plain bar, whether or not tqdm is installed
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    X, Y = seed002_data(16)
    model, seen = seed002_model(), []

    def callback(epoch, loss):
        seen.append((epoch, loss))
        return epoch == 2

    hist = model.fit(X, Y, epochs=10, batch_size=4, progress=True, callback=callback)
    assert [e for e, _ in seen] == [0, 1, 2] and hist.shape == (3,)
    np.testing.assert_array_equal(hist, [l for _, l in seen])
    err = capsys.readouterr().err
    assert "epoch 3/10" in err and "loss" in err


def test_optimizer_state_round_trip_resumes_exactly():
    X, Y = seed002_data(20)
    a, b = seed002_model(), seed002_model()
    opt_a = fa.Adam(0.01)
    a.fit(X, Y, optimizer=opt_a, epochs=6, batch_size=4, shuffle=False)
    opt_b = fa.Adam(0.01)
    b.fit(X, Y, optimizer=opt_b, epochs=3, batch_size=4, shuffle=False)
    state = opt_b.state_dict()
    assert state["steps"] == 15 and state["buffers"].shape == (2 * b.n_params,)
    resumed = fa.Adam(0.01)
    resumed.load_state_dict(state)
    b.fit(X, Y, optimizer=resumed, epochs=3, batch_size=4, shuffle=False)
    np.testing.assert_array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="hyper-parameters"):
        fa.Adam(0.01, betas=(0.5, 0.9)).load_state_dict(state)
    with pytest.raises(ValueError, match="not 'sgd'"):
        fa.SGD(0.1).load_state_dict(state)


def test_training_errors_are_clear():
    X, Y = seed002_data(8)
    model = seed002_model()
    with pytest.raises(ValueError, match="batch_size must be an integer ≥ 1, got 0"):
        model.fit(X, Y, batch_size=0)
    with pytest.raises(ValueError, match="epochs must be an integer ≥ 0"):
        model.fit(X, Y, epochs=-1)
    with pytest.raises(TypeError, match="optimizer must be a fa.SGD"):
        model.fit(X, Y, optimizer="adam")
    with pytest.raises(ValueError, match="targets Y must have 8 rows"):
        model.fit(X, Y[:5])
    with pytest.raises(ValueError, match="training needs at least one sample; X has 0 rows"):
        model.fit(X[:0], Y[:0])
    with pytest.raises(ValueError, match="betas\\[0\\] must be in \\[0, 1\\), got 1.5"):
        fa.Adam(betas=(1.5, 0.9))
    with pytest.raises(ValueError, match="lr must be finite and ≥ 0"):
        fa.SGD(-1.0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        fa.SGD(0.1, nesterov=True)
    opt = fa.Adam()
    model.fit(X, Y, optimizer=opt, epochs=1)
    other = fa.Chain(fa.Dense(1, 2), fa.Dense(2, 1), dtype=np.float64)
    with pytest.raises(ValueError, match="holds state for 97 float64 parameters, not 7 float64"):
        other.fit(X, Y, optimizer=opt)
    p = model.params.copy()
    with pytest.raises(ValueError, match="params must be a vector"):
        opt.step(np.zeros((97, 1)), np.zeros(97))
    with pytest.raises(ValueError, match="grad"):
        opt.step(model.params, np.zeros(5))
    np.testing.assert_array_equal(model.params, p)  # nothing written by the refused calls


# Model files. ------------------------------------------------------------------------------------

def test_save_load_round_trip_is_exact(tmp_path):
    X, Y = seed002_data(30)
    model = fa.Chain(fa.Dense(1, 8, "tanh"), fa.Dense(8, 4, "gelu", use_bias=False),
                     fa.Dense(4, 1), dtype=np.float32, seed=3)
    opt = fa.AdamW(0.01)
    model.fit(X, Y, optimizer=opt, epochs=2, batch_size=8)
    path = tmp_path / "net.npz"
    model.save(path, optimizer=opt)
    loaded, opt2 = fa.load(path, with_optimizer=True)
    assert repr(loaded) == repr(model) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded.params, model.params)
    np.testing.assert_array_equal(loaded(X), model(X))
    assert isinstance(opt2, fa.AdamW) and opt2.steps == opt.steps and opt2.lr == opt.lr
    np.testing.assert_array_equal(opt2.state_dict()["buffers"], opt.state_dict()["buffers"])
    # Both continue identically.
    model.fit(X, Y, optimizer=opt, epochs=1, batch_size=8)
    loaded.fit(X, Y, optimizer=opt2, epochs=1, batch_size=8)
    np.testing.assert_array_equal(loaded.params, model.params)
    # Without an optimiser in the file.
    model.save(str(path))
    assert fa.load(path, with_optimizer=True)[1] is None
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def header_bytes(**overrides):
    h = {"format": "fastad.chain", "version": 1, "dtype": "float64", "n_params": 4,
         "layers": [{"in": 1, "out": 2, "activation": None, "use_bias": True}]}
    h.update(overrides)
    return np.frombuffer(json.dumps(h).encode(), np.uint8)


def test_corrupt_truncated_wrong_version_and_hostile_files_raise_format_error(tmp_path):
    good = tmp_path / "good.npz"
    seed002_model().save(good)
    data = good.read_bytes()
    cases = {
        "random.npz": os.urandom(500),
        "truncated.npz": data[: len(data) // 2],
        "empty.npz": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(fa.FormatError, match=name):
            fa.load(tmp_path / name)
    params = np.zeros(4)
    bad = {
        "version": (dict(arrays=dict(header=header_bytes(version=2), params=params)),
                    "file version 2; this fastad reads version 1"),
        "format": (dict(arrays=dict(header=header_bytes(format="other"), params=params)),
                   "not a fastad model file"),
        "noheader": (dict(arrays=dict(params=params)), "no 'header' array"),
        "json": (dict(arrays=dict(header=np.frombuffer(b"{not json", np.uint8), params=params)),
                 "not valid JSON"),
        "layer": (dict(arrays=dict(header=header_bytes(layers=[{"in": "1; import os", "out": 2,
                                                                "activation": None,
                                                                "use_bias": True}]),
                                   params=params)), "layer 0 is malformed"),
        "activation": (dict(arrays=dict(header=header_bytes(layers=[{"in": 1, "out": 2,
                                                                     "activation": "__import__",
                                                                     "use_bias": True}]),
                                        params=params)), "layer 0 is malformed"),
        "count": (dict(arrays=dict(header=header_bytes(n_params=5), params=params)),
                  "header says 5 parameters; the layers have 4"),
        "params": (dict(arrays=dict(header=header_bytes(), params=np.zeros(3))),
                   r"params is float64 \(3,\); expected float64 \(4,\)"),
        "pickle": (dict(arrays=dict(header=header_bytes(),
                                    params=np.array([{"x": 1}, None, 1, 2], dtype=object))),
                   r"params is object \(4,\); expected float64 \(4,\)"),
    }
    for name, (spec, message) in bad.items():
        path = tmp_path / f"{name}.npz"
        write_npz(path, **spec["arrays"])
        with pytest.raises(fa.FormatError, match=message):
            fa.load(path)
    assert zipfile.is_zipfile(good)
    with pytest.raises(FileNotFoundError):
        fa.load(tmp_path / "missing.npz")


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "net.npz"
    model = seed002_model()
    model.save(path)
    before, saved = path.read_bytes(), model.params.copy()
    model.params[:] += 1.0

    def crash(f, **arrays):  # dies halfway through writing
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["net.npz"]  # no temporary file left behind
    np.testing.assert_array_equal(fa.load(path).params, saved)


def test_models_with_custom_activations_cannot_be_saved(tmp_path):
    model = fa.Chain(fa.Dense(1, 2, fa.sin), fa.Dense(2, 1))
    with pytest.raises(ValueError, match="custom activation function"):
        model.save(tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())


def test_every_malformed_header_field_and_optimizer_buffer_is_a_format_error(tmp_path):
    """A schema check of the whole header before anything is built: wrong types, ranges and
    sizes are FormatError (not TypeError, OverflowError, MemoryError), and optimiser buffers are
    checked at load, not in a later fit."""
    layer = {"in": 1, "out": 2, "activation": None, "use_bias": True}
    adam = {"rule": "adam", "hyper": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
            "lr": 1e-3, "steps": 3}
    params, buffers = np.zeros(4), np.zeros(8)

    def opt(**changes):
        return dict(adam, **changes)

    cases = {
        "activation list": dict(layers=[dict(layer, activation=["relu"])]),
        "activation dict": dict(layers=[dict(layer, activation={"a": 1})]),
        "huge layer": dict(layers=[dict(layer, out=2**48)], n_params=2**49),
        "bool size": dict(layers=[dict(layer, out=True)], n_params=2),
        "float count": dict(n_params=4.0),
        "layers dict": dict(layers={"0": layer}),
        "extra entry": dict(extra=1),
        "bool version": dict(version=True),
        "lr string": dict(optimizer=opt(lr="0.1")),
        "lr negative": dict(optimizer=opt(lr=-1.0)),
        "steps negative": dict(optimizer=opt(steps=-1)),
        "steps huge": dict(optimizer=opt(steps=2**64)),
        "steps float": dict(optimizer=opt(steps=3.0)),
        "betas string": dict(optimizer=opt(hyper=dict(adam["hyper"], betas="0.9"))),
        "betas short": dict(optimizer=opt(hyper=dict(adam["hyper"], betas=[0.9]))),
        "eps list": dict(optimizer=opt(hyper=dict(adam["hyper"], eps=[1]))),
        "missing hyper": dict(optimizer=opt(hyper={"eps": 1e-8})),
        "unknown rule": dict(optimizer=opt(rule="lbfgs")),
        "rule list": dict(optimizer=opt(rule=["adam"])),
        "optimizer list": dict(optimizer=[1, 2]),
    }
    for name, overrides in cases.items():
        path = tmp_path / "bad.npz"
        write_npz(path, header=header_bytes(**overrides), params=params, optimizer_buffers=buffers)
        with pytest.raises(fa.FormatError):
            fa.load(path, with_optimizer=True)
    buffer_cases = {
        "short": (np.zeros(7), r"optimizer_buffers is float64 \(7,\); expected float64 \(8,\)"),
        "dtype": (np.zeros(8, np.float32), r"optimizer_buffers is float32 \(8,\)"),
        "missing": (None, "state buffer.*after 3 steps must give"),
    }
    for name, (b, message) in buffer_cases.items():
        path = tmp_path / f"{name}.npz"
        arrays = dict(header=header_bytes(optimizer=adam), params=params)
        if b is not None:
            arrays["optimizer_buffers"] = b
        write_npz(path, **arrays)
        with pytest.raises(fa.FormatError, match=message):
            fa.load(path, with_optimizer=True)
    # Buffers for an optimiser that keeps none.
    sgd = {"rule": "sgd", "hyper": {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
           "lr": 0.1, "steps": 1}
    write_npz(tmp_path / "sgd.npz", header=header_bytes(optimizer=sgd), params=params,
              optimizer_buffers=np.zeros(4))
    with pytest.raises(fa.FormatError, match="keeps none"):
        fa.load(tmp_path / "sgd.npz")
    # The valid versions of these files load.
    write_npz(tmp_path / "ok.npz", header=header_bytes(optimizer=adam), params=params,
              optimizer_buffers=buffers)
    model, o = fa.load(tmp_path / "ok.npz", with_optimizer=True)
    assert model.n_params == 4 and o.steps == 3 and isinstance(o, fa.Adam)


def test_declared_sizes_are_checked_before_anything_is_allocated(tmp_path):
    """A 2 KB file declaring a 4.3 GB params array (a .npy header for 2**29 doubles over 2 MB of
    compressed zeros, and a zip entry lying about its size), and archives whose members really
    expand to 256 MB (deflate, bzip2), are refused without allocating: run in a subprocess that
    measures its peak memory."""
    import io
    header = {"format": "fastad.chain", "version": 1, "dtype": "float64", "n_params": 2**29,
              "layers": [{"in": 2**13, "out": 2**16, "activation": None, "use_bias": False}]}
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        npy, {"descr": "<f8", "fortran_order": False, "shape": (2**29,)})
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("header.npy", _npy(np.frombuffer(json.dumps(header).encode(), np.uint8)))
        z.writestr("params.npy", npy.getvalue() + bytes(2 << 20))
    assert bomb.stat().st_size < 5000
    lying = tmp_path / "lying.npz"
    data = bytearray(bomb.read_bytes())
    # The central directory's uncompressed size of params.npy, set to 4.3 GB.
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (2**32 - 1).to_bytes(4, "little")
    lying.write_bytes(bytes(data))
    # Consistent bombs: the header declares exactly what the member really holds, 256 MB of
    # zeros, deflated to ~250 KB or bzip2-ed to a few hundred bytes.
    consistent = []
    n = 2**25
    header["n_params"] = n
    header["layers"] = [{"in": 2**9, "out": 2**16, "activation": None, "use_bias": False}]
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<f8", "fortran_order": False,
                                               "shape": (n,)})
    for method in (zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
        path = tmp_path / f"consistent{method}.npz"
        with zipfile.ZipFile(path, "w", method) as z:
            z.writestr("header.npy", _npy(np.frombuffer(json.dumps(header).encode(), np.uint8)))
            info = zipfile.ZipInfo("params.npy")
            info.compress_type = method
            with z.open(info, "w", force_zip64=True) as f:
                f.write(npy.getvalue())
                chunk = bytes(1 << 22)
                for _ in range(n * 8 // len(chunk)):
                    f.write(chunk)
        assert path.stat().st_size < 400_000
        consistent.append(str(path))
    code = f"""
import resource, fastad as fa
for p in ({str(bomb)!r}, {str(lying)!r}, *{consistent!r}):
    try:
        fa.load(p)
    except fa.FormatError as e:
        print("FormatError", "allow_pickle" not in str(e))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 400_000)  # KB
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == ["FormatError True"] * 4 + ["True"], r.stdout


def _npy(a):
    import io
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def test_files_that_are_not_fastad_models_say_what_they_are(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros(3))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with open(tmp_path / "pickled.npz", "wb") as f:
        np.savez(f, x=np.array([{"a": 1}], dtype=object))
    (tmp_path / "text.npz").write_text("hello")
    expected = {
        "single.npy": "a single .npy array; expected a fastad model file",
        "pickled.npy": "a single .npy array; expected a fastad model file",
        "pickled.npz": "unexpected member 'x.npy'",
        "text.npz": "not a zip archive; expected a fastad model file",
    }
    for name, message in expected.items():
        with pytest.raises(fa.FormatError, match=message) as e:
            fa.load(tmp_path / name)
        assert "allow_pickle" not in str(e.value)


def test_save_keeps_the_mode_of_the_file_it_replaces_and_reports_the_original_error(tmp_path,
                                                                                   monkeypatch):
    model = seed002_model()
    new = tmp_path / "new.npz"
    model.save(new)
    umask = os.umask(0o022)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask
    old = tmp_path / "old.npz"
    old.write_bytes(b"x")
    os.chmod(old, 0o640)
    model.save(old)
    assert old.stat().st_mode & 0o777 == 0o640
    np.testing.assert_array_equal(fa.load(old).params, model.params)

    # The temporary file is already gone when the original error surfaces (e.g. the directory
    # was cleaned up): the error reported is the save's own, not the clean-up's.
    def fail(f, **arrays):
        for tmp in tmp_path.glob(".old.npz.*.tmp"):
            tmp.unlink()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="No space left on device"):
        model.save(old)
