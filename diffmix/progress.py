"""Progress of a long loop, the same figures everywhere: a bar on a terminal, plain log lines
otherwise, and the one loss figure (an exponential moving average) every status shows.

- :class:`LossEMA`: the loss figure of personalization and training runs. Every place that
  shows a running loss (status line, events, page tables, CLI lines) shows this one, named
  :data:`LOSS_NAME`.
- :class:`ProgressReporter`: a ``tqdm`` bar when stderr is a terminal; when it is not (a log
  file, a pipe, a job's log), a plain ``INFO`` line at most every :data:`LINE_EVERY_S` seconds
  or :data:`LINE_EVERY_FRACTION` of the work, and one at the end: step, total, rate, ETA, loss.
  (A bar in a log file is a garble of carriage returns; ``tqdm(disable=None)`` shows nothing.)
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import IO

logger = logging.getLogger("diffmix.progress")

#: Weight of the newest step in the loss average (a span of about 2/0.05 - 1 = 39 steps; our
#: choice: steady enough to read, recent enough to follow the run).
EMA_WEIGHT = 0.05
#: What the loss figure is called wherever it is shown.
LOSS_NAME = "loss (EMA)"
#: Plain progress lines: at most one every this many seconds ...
LINE_EVERY_S = 10.0
#: ... or every this fraction of the work, whichever comes first.
LINE_EVERY_FRACTION = 0.1


class LossEMA:
    """Exponential moving average of step losses: ``m ← m + w·(x − m)``, ``w`` =
    :data:`EMA_WEIGHT`, bias-corrected (``m / (1 − (1 − w)^n)``) so early values are not pulled
    toward 0. ``value`` is None before the first update."""

    def __init__(self, weight: float = EMA_WEIGHT, value: float | None = None, count: int = 0):
        if not 0 < weight <= 1:
            raise ValueError(f"EMA weight must be in (0, 1], got {weight}")
        self.weight = weight
        self._raw = 0.0
        self.count = 0
        if value is not None and count > 0:  # resume from a saved (corrected) value
            self.count = count
            self._raw = value * (1 - (1 - weight) ** count)

    def update(self, loss: float) -> float:
        """Add one step's loss; returns the new average."""
        if not math.isfinite(loss):
            return self.value if self.value is not None else loss
        self._raw += self.weight * (loss - self._raw)
        self.count += 1
        return self.value  # type: ignore[return-value]

    @property
    def value(self) -> float | None:
        if self.count == 0:
            return None
        return self._raw / (1 - (1 - self.weight) ** self.count)


def format_eta(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``2.5 h`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    from diffmix.costs import format_duration

    return format_duration(seconds)


def progress_line(
    desc: str, done: int, total: int, rate: float, unit: str, loss: float | None = None
) -> str:
    """``personalize: step 120/1500 (8 %) · 0.31 step/s · ETA 1.2 h · loss (EMA) 0.1234``."""
    pct = 100.0 * done / max(total, 1)
    eta = (total - done) / rate if rate > 0 else None
    text = (
        f"{desc}: {unit} {done}/{total} ({pct:.0f} %) · {rate:.3g} {unit}/s · ETA {format_eta(eta)}"
    )
    if loss is not None:
        text += f" · {LOSS_NAME} {loss:.4f}"
    return text


class ProgressReporter:
    """A progress display for ``total`` units of work starting at ``initial``.

    On a terminal (``stream.isatty()``): a ``tqdm`` bar with the loss as postfix. Otherwise:
    :func:`progress_line` logged at ``INFO`` on the first update, then at most every
    ``every_s`` seconds or ``every_fraction`` of the work, and at :meth:`close`.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "",
        unit: str = "step",
        stream: IO[str] | None = None,
        every_s: float = LINE_EVERY_S,
        every_fraction: float = LINE_EVERY_FRACTION,
        clock=time.monotonic,
    ) -> None:
        self.total, self.done, self.start = int(total), int(initial), int(initial)
        self.desc, self.unit = desc, unit
        self.every_s, self.every_fraction, self.clock = every_s, every_fraction, clock
        self.loss: float | None = None
        self.t0 = self.last_t = clock()
        self.last_done = self.done
        self.lines = 0
        stream = stream if stream is not None else sys.stderr
        try:
            tty = bool(stream.isatty())
        except (AttributeError, ValueError):
            tty = False
        self.bar = None
        if tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream)

    @property
    def rate(self) -> float:
        """Units per second since the start (of this call: a resume counts from there)."""
        return (self.done - self.start) / max(self.clock() - self.t0, 1e-9)

    def update(self, n: int = 1, *, loss: float | None = None) -> None:
        """``n`` more units done; ``loss``: the current loss figure (:class:`LossEMA`)."""
        self.done += n
        if loss is not None:
            self.loss = loss
        if self.bar is not None:
            self.bar.update(n)
            if loss is not None:
                self.bar.set_postfix_str(f"{LOSS_NAME} {loss:.4f}", refresh=False)
            return
        now = self.clock()
        step = max(1, math.ceil(self.every_fraction * self.total))
        due = (
            self.lines == 0
            or now - self.last_t >= self.every_s
            or self.done // step > self.last_done // step
        )
        if due and self.done < self.total:
            self._line(now)

    def _line(self, now: float) -> None:
        logger.info(
            "%s", progress_line(self.desc, self.done, self.total, self.rate, self.unit, self.loss)
        )
        self.last_t, self.last_done = now, self.done
        self.lines += 1

    def close(self) -> None:
        """The final line (plain output) or close the bar."""
        if self.bar is not None:
            self.bar.close()
        elif self.done > self.last_done or self.lines == 0:
            self._line(self.clock())
