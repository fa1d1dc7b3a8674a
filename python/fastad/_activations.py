"""Activation functions a `Dense` layer takes by name (and a model file may name)."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

from . import _ops


def gelu(x: Any) -> Any:
    """GELU, tanh form (JAX's default): ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``."""
    return 0.5 * x * (1.0 + _ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


ACTIVATIONS: Dict[str, Optional[Callable[[Any], Any]]] = {
    "identity": None,
    "linear": None,
    "relu": _ops.relu,
    "tanh": _ops.tanh,
    "sigmoid": _ops.sigmoid,
    "softplus": _ops.softplus,
    "gelu": gelu,
}
