"""Saving and loading Chains: a pickle-free file format.

A model file is a NumPy ``.npz`` archive (a zip of ``.npy`` arrays, read with
``allow_pickle=False``) holding:

- ``header``: uint8, the UTF-8 bytes of a JSON object: ``{"format": "fastad.chain",
  "version": 1, "dtype": "float32" | "float64", "n_params": P, "layers": [{"in": int, "out":
  int, "activation": null | "relu" | "tanh" | "sigmoid" | "softplus" | "gelu", "use_bias":
  bool}, ...]}``, plus ``"optimizer": {"rule", "hyper", "lr", "steps"}`` when saved with one;
- ``params``: the flat parameter vector (P,) in ``dtype``;
- ``optimizer_buffers``: the optimiser's state buffers, when it has any.

Loading never executes code from the file; anything unexpected raises ``fa.FormatError``. This
module reads and writes the format; ``fa.load`` (in `_chain.py`) builds the Chain from what
`read` found.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np

from . import _optim
from ._activations import ACTIVATIONS

FORMAT, VERSION = "fastad.chain", 1
_MAX_HEADER = 1 << 20  # bytes: a header is a few hundred; anything huge is not ours


class FormatError(ValueError):
    """A file is not a fastad model this version can read (corrupt, truncated, another format or
    version, or inconsistent contents)."""


class Contents(NamedTuple):
    """A model file's validated contents."""

    dtype: str
    layers: List[Dict[str, Any]]  # {"in", "out", "activation", "use_bias"} per layer
    params: np.ndarray
    optimizer: Optional[_optim.Optimizer]


def save(model: Any, path: Any, optimizer: Optional[_optim.Optimizer] = None) -> None:
    """Writes `model` (a ``fa.Chain``) and, when given, the optimiser's state to `path` in
    fastad's pickle-free format (see ``fa.load``). Atomic: the file is written beside `path` and
    renamed over it, so a failed save leaves any previous file intact."""
    layers = []
    for k, layer in enumerate(model.layers):
        act = layer.activation
        if act is not None and not (isinstance(act, str) and act in ACTIVATIONS):
            raise ValueError(f"layer {k} ({layer!r}) has a custom activation function, which a "
                             f"model file cannot hold; only named activations can be saved")
        layers.append({"in": layer.in_features, "out": layer.out_features, "activation": act,
                       "use_bias": layer.use_bias})
    header: Dict[str, Any] = {"format": FORMAT, "version": VERSION, "dtype": model.dtype.name,
                              "n_params": model.n_params, "layers": layers}
    arrays = {"params": model.params}
    if optimizer is not None:
        state = _optim.optional(optimizer).state_dict()
        buffers = state.pop("buffers")
        header["optimizer"] = state
        if buffers is not None:
            arrays["optimizer_buffers"] = buffers
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a part
    except BaseException:
        os.unlink(tmp)
        raise


def read(path: Any) -> Contents:
    """The validated contents of a model file written by `save`; ``fa.FormatError`` naming the
    problem for anything else. Never executes anything from the file."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise FormatError(f"{path}: a single .npy array, not a fastad model archive")
            names = set(z.files)
            for required in ("header", "params"):
                if required not in names:
                    raise FormatError(f"{path}: no {required!r} array; not a fastad model file")
            header = _header(path, z["header"])
            params = z["params"]
            buffers = z["optimizer_buffers"] if "optimizer_buffers" in names else None
    except (FileNotFoundError, IsADirectoryError, PermissionError, FormatError):
        raise
    except Exception as e:  # zip, zlib, npy or value errors: corrupt or truncated
        raise FormatError(f"{path}: not a readable fastad model file ({type(e).__name__}: {e})") from e

    dtype, layers = _layers(path, header, params)
    opt = None
    if "optimizer" in header:
        state = header["optimizer"]
        if not isinstance(state, dict) or not isinstance(state.get("hyper", {}), dict):
            raise FormatError(f"{path}: malformed optimizer entry")
        state = dict(state)
        if "betas" in state.get("hyper", {}):
            state["hyper"]["betas"] = tuple(state["hyper"]["betas"])
        state["buffers"] = buffers
        try:
            opt = _optim.from_state(state)
        except (TypeError, ValueError, KeyError) as e:
            raise FormatError(f"{path}: optimizer state cannot be restored: {e}") from e
    return Contents(dtype, layers, params, opt)


def _header(path: str, raw: np.ndarray) -> Dict[str, Any]:
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_HEADER:
        raise FormatError(f"{path}: the header must be a uint8 vector of at most {_MAX_HEADER} bytes")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: the header is not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FormatError(f"{path}: not a fastad model file (format {header.get('format') if isinstance(header, dict) else None!r})")
    if header.get("version") != VERSION:
        raise FormatError(f"{path}: file version {header.get('version')!r}; this fastad reads "
                          f"version {VERSION}")
    return header


def _layers(path: str, header: Dict[str, Any], params: np.ndarray):
    """The dtype and the layers' descriptions, checked against each other and against params."""
    dtype, layers = header.get("dtype"), header.get("layers")
    if dtype not in ("float32", "float64"):
        raise FormatError(f"{path}: dtype {dtype!r}; expected float32 or float64")
    if not isinstance(layers, list) or not layers:
        raise FormatError(f"{path}: 'layers' must be a non-empty list")
    for k, spec in enumerate(layers):
        ok = (isinstance(spec, dict) and set(spec) == {"in", "out", "activation", "use_bias"}
              and all(type(spec[d]) is int and 1 <= spec[d] <= 1 << 24 for d in ("in", "out"))
              and (spec["activation"] is None or spec["activation"] in ACTIVATIONS)
              and type(spec["use_bias"]) is bool)
        if not ok:
            raise FormatError(f"{path}: layer {k} is malformed: {spec!r}")
        if k and spec["in"] != layers[k - 1]["out"]:
            raise FormatError(f"{path}: inconsistent layers: layer {k} takes {spec['in']} inputs "
                              f"but layer {k - 1} gives {layers[k - 1]['out']}")
    n_params = sum(l["out"] * (l["in"] + l["use_bias"]) for l in layers)
    if header.get("n_params") != n_params:
        raise FormatError(f"{path}: header says {header.get('n_params')!r} parameters; the "
                          f"layers have {n_params}")
    if params.dtype != np.dtype(dtype) or params.shape != (n_params,):
        raise FormatError(f"{path}: params is {params.dtype} {params.shape}; expected {dtype} "
                          f"({n_params},)")
    return dtype, layers
