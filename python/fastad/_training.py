"""Training a Chain: the loop runs in the Rust core (``fit_epochs``), one epoch or all of them per
call, with a progress bar and a stopping callback between epochs when asked."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from . import _optim
from ._fastad import fit_epochs
from ._progress import Progress


def fit(model: Any, X: Any, Y: Any = None, *, loss: Any = "sse",
        optimizer: Optional["_optim.Optimizer"] = None, epochs: int = 1, batch_size: int = 32,
        shuffle: bool = True, seed: int = 0, l2: float = 0.0, progress: bool = False,
        callback: Optional[Callable[[int, float], Any]] = None) -> np.ndarray:
    """`Chain.fit`: trains ``model.params`` in place; see there."""
    for name, v, least in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < least:
            raise ValueError(f"{name} must be an integer ≥ {least}, got {v!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    opt = _optim.optional(optimizer)
    prog, args = model._loss_call(X, Y, loss, l2)
    X = np.ascontiguousarray(args[1], model.dtype)  # converted once, not per epoch
    Yc = np.ascontiguousarray(args[2], model.dtype) if len(args) == 3 else None
    losses = np.full(int(epochs), np.nan)

    completed = 0  # epochs whose loss is in `losses`

    def run(first: int, count: int) -> None:
        nonlocal completed
        try:
            fit_epochs(prog, model.params, X, Yc, opt._core, count, int(batch_size),
                       bool(shuffle), int(seed) % 2**64, first, losses[first:first + count])
        except KeyboardInterrupt as e:
            completed = first + getattr(e, "epochs_completed", 0)
            raise
        completed = first + count

    # One training of the model's parameters at a time; Ctrl-C stops the core loop after a
    # whole update and raises KeyboardInterrupt carrying the completed epochs' losses.
    with model._training:
        # What `fa.Laplace(prior_precision="l2")` reads: the objective this training minimised.
        model._fit_record = (loss, float(l2), int(batch_size), X.shape[0])
        try:
            return _epochs(run, losses, int(epochs), progress, callback)
        except KeyboardInterrupt as e:
            e.losses = losses[:completed].copy()
            raise


def _epochs(run: Callable[[int, int], None], losses: np.ndarray, epochs: int, progress: bool,
            callback: Optional[Callable[[int, float], Any]]) -> np.ndarray:
    if not progress and callback is None:
        run(0, epochs)
        return losses
    bar = Progress(epochs) if progress else None
    try:
        for e in range(epochs):
            run(e, 1)
            if bar is not None:
                bar.update(losses[e])
            if callback is not None and callback(e, float(losses[e])) is True:
                return losses[:e + 1]
    finally:
        if bar is not None:
            bar.close()
    return losses
