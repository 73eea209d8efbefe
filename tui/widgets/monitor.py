"""Live graphs: memory over time and seconds per step, the run's progress (elapsed, ETA) and its summary.

Memory is in binary units everywhere in the pane, as in the rest of quantbench: 1 MB = 2^20 bytes,
1 GB = 2^30 bytes. The legend is a line of its own above the plot, in the plot's colours, so it
never covers a line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static
from textual_plotext import PlotextPlot

from .live import LiveStatic
from .preview import monochrome

from ..memory_sampler import LABELS, MemoryHistory

# Series drawn, with colours that read on the dark and the light theme (plotext and rich take the same RGB).
PLOTTED = {"rss": (80, 160, 230), "mlx_active": (230, 140, 50), "mlx_cache": (150, 150, 160),
           "swap": (220, 70, 80)}
# Without colours (a monochrome terminal, or NO_COLOR: Textual's greys made RSS, MLX active and MLX cache one grey),
# each line is drawn in a character of its own, and the legend shows it.
MARKS = {"rss": "•", "mlx_active": "+", "mlx_cache": "·", "swap": "x"}
STEP_COLOUR = (150, 110, 230)
PREDICTION_TOLERANCE = 0.10  # a measured peak further than this from the memory model's is pointed out
MiB, GiB = 2**20, 2**30
# During a run each graph is redrawn at most this often, and never both in one tick: a plotext build and its
# repaint hold the event loop for several milliseconds, and a key that lands behind them waits
# (`quantbench bench --key-latency`). Idle, memory is sampled once a second and drawn as it comes.
PLOT_INTERVAL_SECONDS = 1.0
# The fewest rows a graph is drawn in (its frame, axis labels and a line of data); the step graph, then the memory
# graph, is hidden where the pane leaves less (in a window under about 80x22), so that the run's progress and summary always show.
PLOT_MIN_ROWS = {"memory": 5, "steps": 4}


def plot_unit(largest: float) -> tuple[str, int]:
    """The unit the memory plot's axis uses: MB below 1 GB, else GB."""
    return ("GB", GiB) if largest >= GiB else ("MB", MiB)


def short_bytes(n: float) -> str:
    """Three figures at most, binary units: 241 MB, 14.9 GB."""
    for unit, scale in (("GB", GiB), ("MB", MiB), ("KB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


def memory_lines(latest, peaks: dict) -> str:
    """Now and peak, one line per measure, each under 40 columns (the monitor is 40 wide at 160x48)."""
    return (f"RSS now {short_bytes(latest.rss):>8} · peak {short_bytes(peaks['rss']):>8}\n"
            f"MLX now {short_bytes(latest.mlx_active):>8} · peak {short_bytes(peaks['mlx_active']):>8}\n"
            f"cache {short_bytes(latest.mlx_cache)} · free {short_bytes(latest.available)} · "
            f"swap {short_bytes(latest.swap)}")


def legend(coloured: bool = True) -> Text:
    text = Text()
    for name, colour in PLOTTED.items():
        text.append(f"{'━' if coloured else MARKS[name]} ", style="rgb({},{},{})".format(*colour))
        text.append(f"{LABELS[name]} ")
    return text


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def step_stats(step_seconds: list[float]) -> str:
    """Current, mean and max step time, as btop and macmon show a gauge."""
    if not step_seconds:
        return "s/step: no steps yet"
    mean = sum(step_seconds) / len(step_seconds)
    return f"s/step  now {step_seconds[-1]:.2f} · mean {mean:.2f} · max {max(step_seconds):.2f}"


@dataclass(frozen=True)
class RunSummary:
    """One finished run, for the monitor's last line."""

    total_seconds: float  # the whole run: loading, encoding, denoising, decoding
    load_seconds: float
    step_seconds: tuple[float, ...]
    peak: int  # MLX's measured peak
    predicted_peak: int | None  # the memory model's, for the same run; None when it does not know the model
    kept_dequantized: int = 0  # of the peak: dense copies of quantized layers kept ('keep dense')

    @property
    def prediction_error(self) -> float | None:
        """(measured - predicted) / predicted."""
        if not self.predicted_peak:
            return None
        return (self.peak - self.predicted_peak) / self.predicted_peak

    def text(self) -> Text:
        mean = sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else 0.0
        load = f" (load {duration(self.load_seconds)})" if self.load_seconds >= 0.05 else ""
        text = Text(f"done in {duration(self.total_seconds)}{load} · {mean:.2f} s/step · "
                    f"peak {short_bytes(self.peak)}" + (f" ({short_bytes(self.kept_dequantized)} kept dense)"
                                                        if self.kept_dequantized else ""))
        error = self.prediction_error
        if error is None:
            text.append(" · no prediction for this model", style="dim")
        elif abs(error) > PREDICTION_TOLERANCE:
            text.append(f" · predicted {short_bytes(self.predicted_peak)} ({error:+.0%})", style="bold yellow")
        else:
            text.append(f" · predicted {short_bytes(self.predicted_peak)} ({error:+.0%})", style="dim")
        return text


class MemoryPlot(PlotextPlot):
    coloured = True  # False: each line in its character of MARKS

    def draw(self, history: MemoryHistory) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        series = {name: history.series(name) for name in PLOTTED}
        largest = max((max(y) for _, y in series.values() if y), default=0)
        unit, scale = plot_unit(largest * GiB)
        # a character covers the one under it: without colours, RSS is drawn last and swap (mostly 0) first
        for name, (x, y) in series.items() if self.coloured else reversed(series.items()):
            if x:
                plt.plot(x, [v * GiB / scale for v in y], marker="braille" if self.coloured else MARKS[name],
                         color=PLOTTED[name])
        plt.ylabel(unit)
        plt.xlabel("seconds")
        self.refresh()


class StepPlot(PlotextPlot):
    def draw(self, step_seconds: list[float]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if step_seconds:
            plt.bar(list(range(1, len(step_seconds) + 1)), step_seconds, marker="hd", color=STEP_COLOUR)
        self.refresh()  # no axis label: the line above says s/step


class MonitorPane(Vertical):
    BORDER_TITLE = "Monitor"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Held directly: the app's timers update these even while screens change or the app shuts
        # down, when a DOM query could find nothing.
        self.peaks = LiveStatic(id="peaks")
        self.legend = Static(legend(), id="memory-legend")
        self.memory_plot = MemoryPlot(id="memory-plot")
        self.step_stats = LiveStatic(step_stats([]), id="step-stats")
        self.step_plot = StepPlot(id="step-plot")
        self.progress = ProgressBar(total=1, show_eta=False, id="progress")
        self.progress_text = LiveStatic("idle", id="progress-text")
        self.history = MemoryHistory()
        self.step_seconds: list[float] = []
        self.total_steps = 0
        self.run_started: float | None = None  # while a run goes
        self.phase = ""
        self._drawn = {"memory": 0.0, "steps": 0.0}  # when each graph was last drawn (time.monotonic)
        self._steps_behind = False  # steps arrived since the step graph was drawn

    def on_mount(self) -> None:
        coloured = not (self.app.no_color or monochrome())
        self.memory_plot.coloured = coloured
        self.legend.update(legend(coloured))

    def compose(self) -> ComposeResult:
        yield self.peaks
        yield self.legend
        yield self.memory_plot
        yield self.step_stats
        yield self.step_plot
        yield self.progress
        yield self.progress_text

    def on_resize(self) -> None:
        self.call_after_refresh(self.fit_graphs)  # once the lines of text are laid out at the new width

    def fit_graphs(self) -> None:
        """Show the graphs the pane has rows for after its lines of text: both, the memory graph (and its legend's
        line) alone, or neither. Not while the pane is hidden (a tab in the back: no rows at all)."""
        if not (self.display and self.content_size.height):
            return
        texts = (self.peaks, self.step_stats, self.progress, self.progress_text)
        room = self.content_size.height - sum(widget.outer_size.height for widget in texts) - 1  # the legend
        memory, steps = room >= PLOT_MIN_ROWS["memory"], room >= PLOT_MIN_ROWS["memory"] + PLOT_MIN_ROWS["steps"]
        if (self.memory_plot.display, self.step_plot.display) != (memory, steps):  # no layout when nothing changes
            self.memory_plot.display = self.legend.display = memory
            self.step_plot.display = steps

    def add_sample(self, sample) -> None:
        self.history.add(sample)
        peaks = self.history.peaks
        latest = self.history.samples[-1]
        self.peaks.update(memory_lines(latest, peaks))
        self.call_after_refresh(self.fit_graphs)  # the figures' lines wrap where the pane is narrow
        self._draw_graphs()

    def start_run(self, steps: int, phase: str = "starting") -> None:
        self.history.reset_peaks()
        self.step_seconds = []
        self.total_steps = steps
        self.run_started = time.monotonic()
        self.phase = phase
        self.progress.update(total=steps, progress=0)
        self.step_stats.update(step_stats([]))
        self._steps_behind = True
        self._draw_graphs(force=True)
        self.progress_text.update(self.status())

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.progress_text.update(self.status())

    def show_calibration(self, state) -> None:
        """A calibrating method's progress (core.quant.calibration.CalibrationProgress): block i of N, its ETA."""
        self.phase = state.line()
        self.progress.update(total=max(state.total, 1e-9), progress=min(state.done, state.total))
        self.progress_text.update(self.status())

    def show_step(self, index: int, total: int, seconds_so_far: list[float]) -> None:
        self.step_seconds = list(seconds_so_far)
        self.total_steps = total
        self.phase = "denoising" if index + 1 < total else "decoding"
        self.progress.update(total=total, progress=index + 1)
        self.step_stats.update(step_stats(self.step_seconds))
        self._steps_behind = True
        self._draw_graphs(force=index + 1 == total)
        self.progress_text.update(self.status())

    def status(self) -> str:
        """Where the run is: step, elapsed, ETA (from the mean step so far)."""
        if self.run_started is None:
            return ""
        elapsed = duration(time.monotonic() - self.run_started)
        done = len(self.step_seconds)
        if not done:
            return f"{self.phase} · {elapsed} elapsed"
        eta = sum(self.step_seconds) / done * (self.total_steps - done)
        return f"step {done}/{self.total_steps} · {elapsed} elapsed · ETA {duration(eta)}"

    def tick(self) -> None:
        """Keep the elapsed time moving between steps (the app calls this a few times a second)."""
        if self.run_started is not None:
            self.progress_text.update(self.status())
            self._draw_graphs()

    def finish(self, text: str | Text) -> None:
        self.run_started = None
        self._draw_graphs(force=True)
        self.progress_text.update(text)
        self.call_after_refresh(self.fit_graphs)  # the summary can take a second line

    def _draw_graphs(self, force: bool = False) -> None:
        """Draw what is due: everything when forced or idle; during a run, the graph that waited longest, if
        PLOT_INTERVAL_SECONDS have passed since it was drawn."""
        now, idle = time.monotonic(), self.run_started is None
        due = [name for name in ("memory", "steps") if (name == "memory" or self._steps_behind)
               and (force or idle or now - self._drawn[name] >= PLOT_INTERVAL_SECONDS)]
        if not (force or idle):
            due = sorted(due, key=self._drawn.get)[:1]
        for name in due:
            if name == "memory":
                self.memory_plot.draw(self.history)
            else:
                self.step_plot.draw(self.step_seconds)
                self._steps_behind = False
            self._drawn[name] = now
