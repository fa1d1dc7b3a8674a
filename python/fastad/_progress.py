"""A training progress bar: tqdm when it is installed, else a plain one-line bar on stderr."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._bar = None
        else:
            self._bar = tqdm(total=total, unit="epoch")

    def update(self, loss: float) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
            self._bar.update(1)
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\repoch {self.done}/{self.total} [{'#' * filled}{'.' * (width - filled)}]"
                         f" loss {loss:.6g}  {elapsed:.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()
