"""One progress display for every long phase (kernel blocks, solves, training, sweeps, grids).

`Progress(total, label, enabled=...)` is the only progress display in sslntk:

- on an interactive stream (a terminal, or a Jupyter kernel's output) it is ONE updating tqdm bar
  per phase, with rate, elapsed time and ETA (`label: 40%|████      | 4/10 [00:02<00:03, 2.0it/s]`);
- on anything else (a log file, a pipe, CI) it is quiet while it runs and prints ONE line when the
  phase ends: `label: 10/10 it in 5.1 s (2.0 it/s) loss=0.12`;
- `enabled=False` (every public function's `progress=False`) prints nothing.

`SSLNTK_PROGRESS=bar|line|off` in the environment overrides the choice (e.g. `line` in a notebook
that is rendered to a log, `off` in a batch job). `progress_meter(label)` is a diffrax progress meter
backed by the same display, so ODE solves show the same bar instead of diffrax's text lines.
"""

from __future__ import annotations

import io
import os
import sys
import time

_MODES = ("bar", "line", "off")


def _interactive(stream) -> bool:
    """A terminal, or the output stream of a Jupyter/IPython kernel (which renders `\\r` updates)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    return "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel")


def _columns(stream) -> int | None:
    """None when the terminal reports a usable width (tqdm then follows resizes), else a fixed
    width (`COLUMNS`, or 100): a pseudo-terminal without a window size reports 0 columns (and 0
    rows, which would make tqdm hide the bar, so the caller fixes the rows as well)."""
    try:
        if os.get_terminal_size(stream.fileno()).columns > 0:
            return None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    try:
        return max(40, int(os.environ.get("COLUMNS", "100")))
    except ValueError:
        return 100


def mode(stream=None, enabled: bool = True) -> str:
    """'bar', 'line' or 'off' for `stream` (default stderr), honouring `SSLNTK_PROGRESS`."""
    if not enabled:
        return "off"
    env = os.environ.get("SSLNTK_PROGRESS", "").strip().lower()
    if env in _MODES:
        return env
    return "bar" if _interactive(stream or sys.stderr) else "line"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Progress:
    """`with Progress(total, "label") as p: ... p.update(1, loss=0.3)`.

    `total`: number of units (blocks, steps, widths, percent, ...), `unit` their name.
    `update(k, **info)` advances by k and shows `info` as `key=value` (postfix); `set(n)` moves to
    an absolute position (never backwards). `enabled=False` makes it silent. `every` is the
    minimum seconds between bar redraws. `stream`: default `sys.stderr`.
    """

    def __init__(self, total: int, label: str = "", *, enabled: bool = True, every: float = 0.2,
                 stream=None, unit: str = "it"):
        self.total, self.label, self.unit = int(total), label, unit
        self.stream = stream or sys.stderr
        self.mode = mode(self.stream, enabled)
        self.enabled = self.mode != "off"
        self.i = 0
        self._info: dict = {}
        self._t0 = time.perf_counter()
        self._closed = False
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            width = _columns(self.stream)
            self._bar = tqdm(total=self.total, desc=label, file=self.stream, unit=unit,
                             mininterval=every, leave=True, dynamic_ncols=width is None,
                             ncols=width, **({} if width is None else {"nrows": 40}))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, k: int = 1, **info):
        self.i += k
        if info:
            self._info = info
        if self._bar is not None:
            if info:
                self._bar.set_postfix({a: _fmt(b) for a, b in info.items()}, refresh=False)
            self._bar.update(k)

    def set(self, n, **info):
        """Move to position `n` (ignored when below the current one)."""
        n = min(float(n), self.total) if self.total else float(n)
        if n > self.i:
            k = n - self.i
            if self._bar is None:
                self.i = n
                self._info = info or self._info
            else:
                self.update(k, **info)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "line":
            el = self.elapsed
            done = self.i
            rate = f" ({done / el:.3g} {self.unit}/s)" if el > 0 and done else ""
            extra = " ".join(f"{a}={_fmt(b)}" for a, b in self._info.items())
            n = f"{done:g}" if isinstance(done, float) else str(done)
            msg = f"{self.label}: {n}/{self.total} {self.unit} in {el:.1f} s{rate} {extra}"
            print(msg.rstrip(), file=self.stream, flush=True)


# ------------------------------------------------------------------------------------------------
# the same display for diffrax solves


_METER_CLS = None


def progress_meter(label: str = "solve", refresh_steps: int = 10):
    """A diffrax progress meter drawn by `Progress` (one bar per solve, or one line at its end):
    `diffeqsolve(..., progress_meter=progress_meter("ode solve"))`, in place of diffrax's
    `TextProgressMeter` lines. Updates every `refresh_steps` solver steps (host callbacks are not
    free). diffrax is imported on first use."""
    global _METER_CLS
    if _METER_CLS is None:
        import diffrax
        import equinox as eqx
        import jax.numpy as jnp
        from diffrax._progress_meter import _progress_meter_manager, _TqdmProgressMeterState

        class ProgressMeter(diffrax.TqdmProgressMeter):
            label: str = eqx.field(static=True, default="solve")

            def __check_init__(self):
                pass

            def init(self):
                label = self.label
                idx = _progress_meter_manager.init(lambda: Progress(100, label, unit="%"))
                return _TqdmProgressMeterState(meter_idx=idx, step=jnp.array(0))

            @staticmethod
            def _step_bar(bar, progress) -> None:
                bar.set(round(100 * float(progress), 2))

            @staticmethod
            def _close_bar(bar) -> None:
                bar.set(100)
                bar.close()

        _METER_CLS = ProgressMeter
    return _METER_CLS(refresh_steps=refresh_steps, label=label)


__all__ = ["Progress", "progress_meter", "mode"]
