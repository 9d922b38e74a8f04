"""Progress bars that suit where their output goes.

On a terminal `progress_bar` is tqdm's live bar. When the output is a file (a SLURM log, a pipe) it
writes one plain line every `RINGBENCH_PROGRESS_INTERVAL` seconds (default 30) and a last line at
the end, instead of carriage-return frames that fill a log with redrawn bars.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm


def line_interval_s() -> float:
    return float(os.environ.get("RINGBENCH_PROGRESS_INTERVAL", "30"))


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class LineProgress(tqdm):
    """tqdm that prints whole lines when its stream is not a terminal."""

    def __init__(self, *args, **kwargs):
        stream = kwargs.get("file") or sys.stderr
        self.plain_lines = not is_terminal(stream)
        if self.plain_lines:
            kwargs["mininterval"] = kwargs["maxinterval"] = line_interval_s()
            kwargs["dynamic_ncols"] = False
            kwargs["bar_format"] = PLAIN_FORMAT
            if kwargs.get("disable") is None:  # tqdm's "no terminal, no bar": here it means plain lines
                kwargs["disable"] = False
        self._last_line_at, self._last_line_n = float("-inf"), None
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if not self.plain_lines:
            return super().display(msg, pos)
        if msg == "":  # tqdm clearing its line: there is nothing to clear in a log
            return False
        now = time.monotonic()
        if msg is None and pos != -1 and now - self._last_line_at < line_interval_s():
            return True  # set_postfix and friends refresh at will; a log gets one line per interval
        self._last_line_at, self._last_line_n = now, self.n
        self.fp.write((self.__str__() if msg is None else msg).rstrip() + "\n")
        self.fp.flush()
        return True

    def close(self):
        if self.plain_lines and not self.disable:
            if self._last_line_n != self.n:
                self.display(pos=-1)  # the final count, once
            self.leave = False  # nothing for tqdm to redraw or clear
        super().close()


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)`, printing plain periodic lines when the output is not a terminal."""
    return LineProgress(iterable, **kwargs)
