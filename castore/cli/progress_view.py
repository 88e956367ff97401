"""Render ``castore.progress`` tasks on stderr with click's progress bar (a terminal only).

Imported only when a bar can be shown (stderr is a TTY, no ``-q``): start-up of
every other run pays nothing. Known totals get click's bar with percent and ETA,
plus done/total and the rate; unknown totals (a walk still running) a counter
line with the rate. Redraws are throttled to 10 per second.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from castore.units import human_rate, human_size

REDRAW = 0.1


class ClickReporter:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.bar: Any = None
        self.label, self.unit = "", "B"
        self.total: int | None = None
        self.start = self.last = 0.0
        self.done = self.shown = 0
        self.line = False

    def begin(self, label: str, total: int | None, unit: str) -> None:
        with self.lock:
            self.end()
            self.label, self.total, self.unit = label, total, unit
            self.start, self.last, self.done, self.shown = time.monotonic(), 0.0, 0, 0

    def _info(self, _item: object = None) -> str:
        secs = time.monotonic() - self.start
        if self.unit == "B":
            tot = f"/{human_size(self.total)}" if self.total is not None else ""
            return f"{human_size(self.done)}{tot}  {human_rate(self.done, secs)}"
        tot = f"/{self.total}" if self.total is not None else ""
        rate = f"  {self.done / secs:.0f}/s" if secs > 0 else ""
        return f"{self.done}{tot} {self.unit}{rate}"

    def update(self, done: int, total: int | None) -> None:
        with self.lock:
            self.done = done
            if total != self.total:
                self._close_bar()
                self.total = total
            now = time.monotonic()
            if now - self.last < REDRAW and (total is None or done < total):
                return
            self.last = now
            if self.total:
                if self.bar is None:
                    self.bar = click.progressbar(
                        length=self.total,
                        label=self.label,
                        file=sys.stderr,
                        show_eta=True,
                        show_percent=True,
                        show_pos=False,
                        item_show_func=self._info,
                        update_min_steps=1,
                    )
                    self.bar.__enter__()
                    self.bar.start = time.time() - (now - self.start)  # click's clock for its ETA
                self.bar.update(max(0, min(done, self.total) - self.shown))
                self.shown = min(done, self.total)
            else:
                sys.stderr.write(f"\r{self.label}: {self._info()} ")
                sys.stderr.flush()
                self.line = True

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
            self.shown = 0
        if self.line:
            sys.stderr.write("\n")
            self.line = False

    def end(self) -> None:
        with self.lock:
            if self.bar is not None and self.total:
                self.bar.update(max(0, min(self.done, self.total) - self.shown))
            self._close_bar()


def install_if_terminal(quiet: bool) -> None:
    """Show progress when stderr is a terminal and ``-q`` was not given."""
    if quiet or not sys.stderr.isatty():
        return
    from castore import progress

    progress.install(ClickReporter())
