"""The package's shape promises: no module imports one that imports it back (Rust and Python),
and `fa.save` / Loss objects, the concepts the redesign added, work end to end."""
import ast
import os
import re

import numpy as np
import pytest

import fastad as fa
from conftest import errors_in_threads

ROOT = os.path.join(os.path.dirname(__file__), "..")


def find_cycle(graph):
    """A cycle in {node: set(nodes)} as a list, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def rust_modules():
    """{module path: the crate's modules it names}, from the sources of rust/: every
    `crate::a::b` path (in a `use` or inline) and every `use super::x`."""
    base = os.path.join(ROOT, "rust")
    if not os.path.isdir(base):
        pytest.skip("the Rust sources are not beside the tests")

    def module_of(parts):
        """The deepest prefix of `parts` that is a module (a file or a folder)."""
        for k in range(len(parts), 0, -1):
            path = os.path.join(base, *parts[:k])
            if os.path.exists(path + ".rs") or os.path.isdir(path):
                return "::".join(parts[:k])
        return None

    graph = {}
    for dirpath, _, files in os.walk(base):
        for f in files:
            if not f.endswith(".rs"):
                continue
            module = os.path.relpath(os.path.join(dirpath, f), base)[:-3].split(os.sep)
            if module[-1] in ("mod", "lib"):
                module = module[:-1]
            text = open(os.path.join(dirpath, f)).read()
            uses = {module_of(m.group(1).split("::"))
                    for m in re.finditer(r"crate::([a-z_]+(?:::[a-z_]+)*)", text)}
            uses |= {"::".join(module[:-1] + [m.group(1)])
                     for m in re.finditer(r"use super::([a-z_]+)", text)}
            name = "::".join(module)
            graph[name] = {u for u in uses if u and u != name}
    return graph


def test_rust_modules_import_no_cycle():
    graph = rust_modules()
    assert "plan" in graph and "runner::tiled" in graph
    # `Float` needs the per-type micro-kernels, which need nothing of `Float`; the GEMM above
    # them is generic over `Float`.
    assert graph["float"] >= {"kernels::gemm::microkernel"}
    assert "kernels::gemm" not in graph["float"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_python_modules_import_no_cycle():
    base = os.path.dirname(fa.__file__)
    graph = {}
    for f in os.listdir(base):
        if not f.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(base, f)).read())
        deps = set()
        for node in ast.walk(tree):  # function-level imports count too
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module)
                else:
                    deps.update(a.name for a in node.names)
        graph[f[:-3]] = {d for d in deps if d != "_fastad"}
    assert "_chain" in graph and "_curvature" in graph
    assert find_cycle(graph) is None, find_cycle(graph)


def test_fa_save_and_load_round_trip(tmp_path):
    model = fa.Chain(fa.Dense(2, 4, "tanh"), fa.Dense(4, 1), seed=3)
    opt = fa.Adam(lr=0.01)
    X = np.linspace(-1, 1, 20).reshape(10, 2)
    model.fit(X, np.sin(X[:, :1]), optimizer=opt, epochs=2, batch_size=5)
    path = tmp_path / "net.npz"
    fa.save(model, path, optimizer=opt)
    again, opt2 = fa.load(path, with_optimizer=True)
    assert np.array_equal(again.params, model.params)
    assert np.array_equal(again(X), model(X))
    assert opt2.steps == opt.steps == 4
    with pytest.raises(TypeError, match="fa.save writes a fa.Chain"):
        fa.save(object(), path)


def test_a_loss_object_carries_its_function_and_hessian_factor():
    rng = np.random.default_rng(1)
    model = fa.Chain(fa.Dense(2, 3, "tanh"), fa.Dense(3, 2), seed=0)
    X, Y = rng.normal(size=(7, 2)), rng.normal(size=(7, 2))
    # By object or by name: the same program and the same GGN.
    assert model.loss(X, Y, loss=fa.mse) == model.loss(X, Y, loss="mse")
    assert np.array_equal(model.fisher(X, Y, loss=fa.mse, kind="ggn"),
                          model.fisher(X, Y, loss="mse", kind="ggn"))
    # The mse GGN is (2/K) Σ_b J_bᵀ J_b.
    J = model.jacobian(X)
    want = (2 / 2) * np.einsum("bkp,bkq->pq", J, J)
    assert np.allclose(model.fisher(X, Y, loss=fa.mse, kind="ggn"), want, rtol=1e-12, atol=1e-14)
    # A Loss of one's own without a Hessian factor has no GGN, but an empirical Fisher.
    own = fa.Loss("halved_sse", lambda f, y: 0.5 * fa.sse(f, y))
    with pytest.raises(ValueError, match="kind='ggn' needs the Hessian"):
        model.fisher(X, Y, loss=own, kind="ggn")
    G = model.per_sample_grads(X, Y, loss=own)
    assert np.allclose(model.fisher(X, Y, loss=own), G.T @ G, rtol=1e-12)


def test_fa_save_from_several_threads_leaves_one_whole_file(tmp_path):
    """Eight threads saving different models to one path: every save is atomic (a temporary
    file renamed over the target), so the file is always one of the models, whole, and no
    temporary file is left."""
    models = [fa.Chain(fa.Dense(2, 3, "tanh"), fa.Dense(3, 1), seed=s) for s in range(8)]
    path = tmp_path / "net.npz"

    def save(m):
        for _ in range(5):
            fa.save(m, path)

    errors = errors_in_threads(save, models)
    assert not errors, errors
    loaded = fa.load(path)
    assert any(np.array_equal(loaded.params, m.params) for m in models)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz"]
