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
import math
import os
import tempfile
import zipfile
import zlib
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
    header = describe(model, "a model file")
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
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fchmod(f.fileno(), mode)  # mkstemp's 0600 would otherwise replace the file's mode
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a part
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # the original error is the one to report
        raise


def describe(model: Any, where: str) -> Dict[str, Any]:
    """The header of `model`'s file, without an optimiser: format, version, dtype, parameter
    count and layers. Raises a ValueError for a layer whose activation is a function of one's
    own, which `where` (a model file, a pickle) cannot hold."""
    layers = []
    for k, layer in enumerate(model.layers):
        act = layer.activation
        if act is not None and not (isinstance(act, str) and act in ACTIVATIONS):
            raise ValueError(f"layer {k} ({layer!r}) has a custom activation function, which "
                             f"{where} cannot hold; only the named activations "
                             f"{sorted(ACTIVATIONS)} can")
        layers.append({"in": layer.in_features, "out": layer.out_features, "activation": act,
                       "use_bias": layer.use_bias})
    return {"format": FORMAT, "version": VERSION, "dtype": model.dtype.name,
            "n_params": model.n_params, "layers": layers}


def parse(where: str, header: bytes, params: bytes) -> Contents:
    """A model from its JSON header (`describe`'s, as bytes) and the raw bytes of its
    parameters, as pickling a Chain stores it: validated as `read` validates a file, so a
    tampered pickle raises ``fa.FormatError`` naming `where`, never builds a wrong model."""
    if not isinstance(header, bytes):
        raise FormatError(f"{where}: a header of type {type(header).__name__}; expected bytes")
    fields = _header(where, np.frombuffer(header, np.uint8))
    if "optimizer" in fields:
        raise FormatError(f"{where}: an optimizer entry; a pickled model holds none")
    dtype, layers, n_params = _layers(where, fields)
    size = np.dtype(dtype).itemsize
    if not isinstance(params, bytes) or len(params) != n_params * size:
        got = f"{len(params)} bytes" if isinstance(params, bytes) else type(params).__name__
        raise FormatError(f"{where}: parameters of {got}; the layers need {n_params} {dtype} "
                          f"({n_params * size} bytes)")
    return Contents(dtype, layers, np.frombuffer(params, dtype).copy(), None)


def _mode_for(path: str) -> int:
    """The permission bits a saved file gets: those of the file it replaces, else what a new file
    gets under the umask (read from /proc, as changing the umask to read it is not thread-safe)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        pass
    umask = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
    except OSError:
        pass
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


_MEMBERS = ("header", "params", "optimizer_buffers")
# fa.save stores members uncompressed; a compressed archive of real parameters shrinks little.
# A member expanding more than this many times is a decompression bomb (deflate reaches about
# 1000:1 on zeros, bzip2 and lzma far more), refused before it is read.
_MAX_RATIO = 64
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def read(path: Any) -> Contents:
    """The validated contents of a model file written by `save`; ``fa.FormatError`` naming the
    problem for anything else. Never executes anything from the file, and allocates only what
    the archive's members really hold: every declared size is checked first."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(6)
        size = os.fstat(f.fileno()).st_size
        if magic[:4] != b"PK\x03\x04":
            what = ("a single .npy array" if magic == b"\x93NUMPY" else
                    "empty" if not magic else "not a zip archive")
            raise FormatError(f"{path}: {what}; expected a fastad model file (an .npz archive "
                              f"written by fa.save)")
        try:
            with zipfile.ZipFile(f) as z:
                members = _members(path, z, size)
                header = _header(path, _array(path, z, members["header"], np.dtype(np.uint8),
                                              None, _MAX_HEADER))
                dtype, layers, n_params = _layers(path, header)
                state = _optimizer_header(path, header)
                opt = None
                if state is not None:  # built first: it knows how many buffers it keeps
                    opt = _or_format_error(path, _optim.OPTIMIZERS[state["rule"]],
                                           lr=state["lr"], **state["hyper"])
                params = _array(path, z, members["params"], np.dtype(dtype), (n_params,))
                buffers = None
                if "optimizer_buffers" in members:
                    per = 0 if opt is None else opt._core.buffers_per_param
                    if per == 0:
                        which = "no" if opt is None else "this"
                        raise FormatError(f"{path}: optimizer_buffers given, but {which} "
                                          f"optimizer keeps none")
                    buffers = _array(path, z, members["optimizer_buffers"], np.dtype(dtype),
                                     (per * n_params,))
        except FormatError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
                NotImplementedError, zlib.error) as e:  # corrupt or truncated
            raise FormatError(f"{path}: not a readable fastad model file "
                              f"({type(e).__name__}: {e})") from e

    if opt is not None:
        _or_format_error(path, opt.load_state_dict, dict(state, buffers=buffers))
    return Contents(dtype, layers, params, opt)


def _or_format_error(path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, a step of rebuilding the optimiser, its refusals as FormatError."""
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise FormatError(f"{path}: optimizer state cannot be restored: {e}") from e


def _members(path: str, z: zipfile.ZipFile, size: int) -> Dict[str, zipfile.ZipInfo]:
    """The archive's members by array name, their declared sizes checked against the file."""
    members = {}
    for info in z.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if name not in _MEMBERS or name in members:
            raise FormatError(f"{path}: unexpected member {info.filename!r}; a fastad model file "
                              f"holds {', '.join(m + '.npy' for m in _MEMBERS)}")
        if info.compress_type not in _METHODS:
            raise FormatError(f"{path}: member {info.filename!r} is compressed with method "
                              f"{info.compress_type}; a fastad model file stores its arrays "
                              f"uncompressed (or deflated)")
        if info.header_offset + info.compress_size > size:
            raise FormatError(f"{path}: member {info.filename!r} runs past the end of the file; "
                              f"truncated or corrupt")
        if info.file_size > _MAX_RATIO * info.compress_size + 4096:
            raise FormatError(f"{path}: member {info.filename!r} would expand {info.compress_size} "
                              f"bytes into {info.file_size}; refused as a decompression bomb")
        members[name] = info
    for required in ("header", "params"):
        if required not in members:
            raise FormatError(f"{path}: no {required!r} array; not a fastad model file")
    return members


def _array(path: str, z: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: np.dtype,
           shape: Optional[tuple], max_len: Optional[int] = None) -> np.ndarray:
    """Member `info` as an array of exactly `dtype` and `shape` (a vector of at most `max_len`
    for shape None), its .npy header checked before its data is read."""
    name = info.filename[:-4]
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise FormatError(f"{path}: {name} has .npy version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        found_shape, fortran, found_dtype = read_header(f)
        ok_shape = (shape is None and len(found_shape) == 1 and found_shape[0] <= max_len) or \
            found_shape == shape
        if found_dtype != dtype or not ok_shape or (fortran and len(found_shape) > 1):
            want = f"{dtype} ({max_len} bytes at most)" if shape is None else f"{dtype} {shape}"
            raise FormatError(f"{path}: {name} is {found_dtype} {found_shape}; expected {want}")
        count = int(np.prod(found_shape, dtype=np.int64))
        if info.file_size != f.tell() + count * dtype.itemsize:
            raise FormatError(f"{path}: {name} holds {info.file_size - f.tell()} bytes of data; "
                              f"its header declares {count * dtype.itemsize}")
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise FormatError(f"{path}: {name} is truncated")
    return np.frombuffer(data, dtype).copy() if count else np.zeros(found_shape, dtype)


def _header(path: str, raw: np.ndarray) -> Dict[str, Any]:
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: the header is not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise FormatError(f"{path}: not a fastad model file (format {found!r})")
    if header.get("version") != VERSION or type(header.get("version")) is not int:
        raise FormatError(f"{path}: file version {header.get('version')!r}; this fastad reads "
                          f"version {VERSION}")
    allowed = {"format", "version", "dtype", "n_params", "layers", "optimizer"}
    if set(header) - allowed:
        raise FormatError(f"{path}: unknown header entries {sorted(set(header) - allowed)}")
    return header


def _is_int(v: Any, low: int, high: int) -> bool:
    return type(v) is int and low <= v <= high


def _is_float(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


# The most parameters a file may declare (8 TB of float64): larger is not a real model.
_MAX_PARAMS = 1 << 40


def _layers(path: str, header: Dict[str, Any]):
    """The dtype, the layers' descriptions and the parameter count, checked against each other."""
    dtype, layers = header.get("dtype"), header.get("layers")
    if dtype not in ("float32", "float64"):
        raise FormatError(f"{path}: dtype {dtype!r}; expected float32 or float64")
    if not isinstance(layers, list) or not layers:
        raise FormatError(f"{path}: 'layers' must be a non-empty list")
    for k, spec in enumerate(layers):
        ok = (isinstance(spec, dict) and set(spec) == {"in", "out", "activation", "use_bias"}
              and all(_is_int(spec[d], 1, 1 << 24) for d in ("in", "out"))
              and (spec["activation"] is None
                   or (isinstance(spec["activation"], str) and spec["activation"] in ACTIVATIONS))
              and type(spec["use_bias"]) is bool)
        if not ok:
            raise FormatError(f"{path}: layer {k} is malformed: {spec!r}")
        if k and spec["in"] != layers[k - 1]["out"]:
            raise FormatError(f"{path}: inconsistent layers: layer {k} takes {spec['in']} inputs "
                              f"but layer {k - 1} gives {layers[k - 1]['out']}")
    n_params = sum(l["out"] * (l["in"] + l["use_bias"]) for l in layers)
    if header.get("n_params") != n_params or type(header.get("n_params")) is not int:
        raise FormatError(f"{path}: header says {header.get('n_params')!r} parameters; the "
                          f"layers have {n_params}")
    if n_params > _MAX_PARAMS:
        raise FormatError(f"{path}: {n_params} parameters; more than any model file can hold")
    return dtype, layers, n_params


# Each rule's hyper-parameters, as `state_dict` writes them: name → check.
_HYPER = {
    "sgd": {"momentum": _is_float, "nesterov": lambda v: type(v) is bool,
            "weight_decay": _is_float},
    "adam": {"betas": lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_float, v)),
             "eps": _is_float, "weight_decay": _is_float},
}
_HYPER["adamw"] = _HYPER["adam"]


def _optimizer_header(path: str, header: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The header's optimiser entry, every field of the right type and range, or None."""
    if "optimizer" not in header:
        return None
    state = header["optimizer"]
    ok = (isinstance(state, dict) and set(state) == {"rule", "hyper", "lr", "steps"}
          and isinstance(state["rule"], str) and state["rule"] in _HYPER
          and isinstance(state["hyper"], dict)
          and set(state["hyper"]) == set(_HYPER[state["rule"]])
          and all(check(state["hyper"][k]) for k, check in _HYPER[state["rule"]].items())
          and _is_float(state["lr"]) and state["lr"] >= 0
          and _is_int(state["steps"], 0, 2**63 - 1))
    if not ok:
        raise FormatError(f"{path}: malformed optimizer entry: {state!r}")
    return state
