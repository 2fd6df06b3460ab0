"""The loss Caffe prints: ``Solver::UpdateSmoothedLoss``, a running mean of the last
``average_loss`` iteration losses, kept in float32 as Caffe's ``Dtype`` keeps it.

Until the window is full the value is the mean of all losses so far; after that each new
loss replaces the oldest in a ring and the mean moves by ``(new - oldest) / window``
(an incremental update, so it can differ from a fresh mean in the last float bits, as
Caffe's does). Caffe restarts the window at every ``Solve``; here the window is part of
the solver state, so a resumed run prints what the uninterrupted run would have printed.
"""
from __future__ import annotations

import numpy as np


class LossSmoother:
    """Caffe's smoothed training loss.

    Args:
        window: ``average_loss`` (>= 1).

    Example:
        >>> s = LossSmoother(2)
        >>> [float(s.update(x)) for x in (1.0, 3.0, 5.0)]
        [1.0, 2.0, 4.0]
    """

    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"average_loss must be >= 1, got {window}")
        self.window = window
        self.losses: list = []          # the ring, as np.float32
        self.seen = 0                   # losses since the start: the ring position
        self.value = np.float32(0.0)

    def update(self, loss: float) -> np.float32:
        """Add one iteration's loss (already divided by ``iter_size``).

        Returns:
            The smoothed loss to display.
        """
        loss = np.float32(loss)
        if len(self.losses) < self.window:
            self.losses.append(loss)
            size = len(self.losses)
            self.value = np.float32((self.value * np.float32(size - 1) + loss) / np.float32(size))
        else:
            slot = self.seen % self.window
            self.value = np.float32(self.value + (loss - self.losses[slot]) / np.float32(self.window))
            self.losses[slot] = loss
        self.seen += 1
        return self.value

    def state_dict(self) -> dict:
        """The window, position and value (JSON-safe except ``losses``, a float32 array)."""
        return {"window": self.window, "seen": self.seen,
                "value": np.float32(self.value), "losses": np.asarray(self.losses, np.float32)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; the window must match the solver's."""
        if int(state["window"]) != self.window:
            raise ValueError(f"the saved loss window holds {int(state['window'])} losses but "
                             f"average_loss is {self.window}")
        self.seen = int(state["seen"])
        self.value = np.float32(state["value"])
        self.losses = [np.float32(x) for x in np.asarray(state["losses"], np.float32)]
