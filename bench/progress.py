"""The live view while cells run: counts per state, elapsed time, failures as they happen.

On a terminal it is a tqdm bar whose postfix holds the counts; in a log file (not a TTY) it prints
one line whenever the counts change, so logs stay short and readable.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TextIO

from ringbench_common.progress import is_terminal

STATES = ("queued", "submitted", "running", "done", "failed")


class ProgressView:
    def __init__(self, label: str, total: int, initial_done: int, stream: TextIO, enabled: bool = True):
        self.label, self.total, self.initial_done, self.stream = label, total, initial_done, stream
        self.enabled = enabled
        self.start = time.time()
        self._last_line = ""
        self._bar = None
        if enabled and is_terminal(stream):  # the one terminal-or-log switch (ringbench_common.progress)
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial_done, desc=label, unit="cell", file=stream,
                             dynamic_ncols=True, mininterval=0.5)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def update(self, counts: Counter) -> None:
        """`counts` covers the cells of this run that were not already done before it started."""
        if not self.enabled:
            return
        done = self.initial_done + counts.get("done", 0)
        text = " ".join(f"{state}={counts.get(state, 0) + (self.initial_done if state == 'done' else 0)}"
                        for state in STATES)
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.n = done + counts.get("failed", 0)
            self._bar.refresh()
        elif text != self._last_line:
            self._last_line = text
            elapsed = time.time() - self.start
            print(f"{self.label} [{elapsed:7.1f}s] {text} / {self.total}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
