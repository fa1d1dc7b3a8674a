"""Optimisers: ``fa.SGD``, ``fa.Adam``, ``fa.AdamW``. The update rules (PyTorch's) and their
state (flat buffers the size of the parameters) live in the Rust core, so ``model.fit`` runs the
whole training loop there; ``opt.step(params, grad)`` is the same update for loops of your own."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _fastad


class Optimizer:
    """Base class: holds the core optimiser. Its state is created at the first step with the
    dtype and length of the parameters it updates; use one optimiser per model."""

    _rule = ""

    def __init__(self, lr: float, **hyper: Any) -> None:
        self._hyper = dict(hyper)
        self._core = _fastad.Optimizer(self._rule, float(lr), **self._core_args(hyper))

    @staticmethod
    def _core_args(hyper: Dict[str, Any]) -> Dict[str, Any]:
        args = dict(hyper)
        if "betas" in args:
            args["beta1"], args["beta2"] = (float(b) for b in args.pop("betas"))
        return args

    @property
    def lr(self) -> float:
        """The learning rate; assign to it for a schedule."""
        return self._core.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._core.lr = float(value)

    @property
    def steps(self) -> int:
        """Updates taken so far."""
        return self._core.steps

    def step(self, params: np.ndarray, grad: Any) -> None:
        """One in-place update of `params` (a writable float32/float64 vector, e.g.
        ``model.params``) from the gradient `grad` of the same length."""
        self._core.step(params, grad)

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume: the rule, its hyper-parameters, lr, steps and a copy of
        the state buffers (None before the first step)."""
        return {"rule": self._rule, "hyper": dict(self._hyper), "lr": self.lr,
                "steps": self.steps, "buffers": self._core.state_buffers()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores a `state_dict` of an optimiser of the same rule and hyper-parameters."""
        if state.get("rule") != self._rule:
            raise ValueError(f"state is of a {state.get('rule')!r} optimizer, not {self._rule!r}")
        hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in state.get("hyper", {}).items()}
        mine = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._hyper.items()}
        if hyper != mine:
            raise ValueError(f"state has hyper-parameters {hyper}; this optimizer has {mine}")
        self._core.set_state(int(state["steps"]), state.get("buffers"))
        self.lr = state["lr"]

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyper.items())
        return f"{type(self).__name__}(lr={self.lr!r}, {hyper})"


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's rule: v = g + weight_decay·θ; with momentum μ,
    buf = μ·buf + v (buf = v at the first step) and v = buf, or v + μ·buf with `nesterov`;
    θ −= lr·v."""

    _rule = "sgd"

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(lr, momentum=float(momentum), nesterov=bool(nesterov),
                         weight_decay=float(weight_decay))


class Adam(Optimizer):
    """Adam with bias correction (PyTorch's rule): g += weight_decay·θ, m = β₁m + (1−β₁)g,
    v = β₂v + (1−β₂)g², θ −= lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps). The defaults are Flux's and
    PyTorch's."""

    _rule = "adam"

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(lr, betas=tuple(float(b) for b in betas), eps=float(eps),
                         weight_decay=float(weight_decay))


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): θ ← θ·(1 − lr·weight_decay)
    before the Adam update, instead of adding the decay to the gradient."""

    _rule = "adamw"

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def optional(opt: Optional[Optimizer]) -> Optimizer:
    if opt is None:
        return Adam()
    if isinstance(opt, type) and issubclass(opt, Optimizer):
        raise TypeError(f"optimizer must be an optimizer object: pass fa.{opt.__name__}() (an "
                        f"instance, which keeps the state), not the class fa.{opt.__name__}")
    if not isinstance(opt, Optimizer):
        raise TypeError(f"optimizer must be a fa.SGD, fa.Adam or fa.AdamW object, got "
                        f"{opt!r} of type {type(opt).__name__}")
    return opt
