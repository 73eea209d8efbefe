"""Live graphs: memory over time, seconds per step as bars, progress with ETA."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static
from textual_plotext import PlotextPlot

from quantbench.core.memory import format_bytes

from ..memory_sampler import LABELS, MemoryHistory

PLOTTED = ("rss", "mlx_active", "mlx_cache", "swap")


class MemoryPlot(PlotextPlot):
    def draw(self, history: MemoryHistory) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        for name in PLOTTED:
            x, y = history.series(name)
            if x:
                plt.plot(x, y, label=LABELS[name], marker="braille")
        plt.ylabel("GiB")
        plt.xlabel("seconds")
        self.refresh()


class StepPlot(PlotextPlot):
    def draw(self, step_seconds: list[float]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if step_seconds:
            plt.bar(list(range(1, len(step_seconds) + 1)), step_seconds, marker="hd")
        plt.ylabel("s/step")
        self.refresh()


class MonitorPane(Vertical):
    BORDER_TITLE = "Monitor"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Held directly: the app's timers update these even while screens change or the app shuts
        # down, when a DOM query could find nothing.
        self.peaks = Static(id="peaks")
        self.memory_plot = MemoryPlot(id="memory-plot")
        self.step_plot = StepPlot(id="step-plot")
        self.progress = ProgressBar(total=1, show_eta=False, id="progress")
        self.progress_text = Static("idle", id="progress-text")
        self.history = MemoryHistory()
        self.step_seconds: list[float] = []
        self.run_started = 0.0

    def compose(self) -> ComposeResult:
        yield self.peaks
        yield self.memory_plot
        yield self.step_plot
        yield self.progress
        yield self.progress_text

    def add_sample(self, sample) -> None:
        self.history.add(sample)
        peaks = self.history.peaks
        latest = self.history.samples[-1]
        self.peaks.update(
            f"RSS {format_bytes(latest.rss)} (peak {format_bytes(peaks['rss'])})  "
            f"MLX {format_bytes(latest.mlx_active)} (peak {format_bytes(peaks['mlx_active'])})  "
            f"cache {format_bytes(latest.mlx_cache)}  free {format_bytes(latest.available)}  "
            f"swap {format_bytes(latest.swap)}")
        self.memory_plot.draw(self.history)

    def start_run(self, steps: int) -> None:
        self.history.reset_peaks()
        self.step_seconds = []
        self.run_started = time.monotonic()
        self.progress.update(total=steps, progress=0)
        self.progress_text.update(f"step 0/{steps}")
        self.step_plot.draw([])

    def show_step(self, index: int, total: int, seconds_so_far: list[float]) -> None:
        self.step_seconds = list(seconds_so_far)
        done = index + 1
        mean = sum(self.step_seconds) / len(self.step_seconds)
        eta = mean * (total - done)
        self.progress.update(total=total, progress=done)
        self.progress_text.update(
            f"step {done}/{total}  {self.step_seconds[-1]:.2f}s  mean {mean:.2f}s/step  ETA {eta:.1f}s")
        self.step_plot.draw(self.step_seconds)

    def finish(self, text: str) -> None:
        self.progress_text.update(text)
