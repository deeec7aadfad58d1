"""Progress that crosses processes through files: a task (in this process or on a Dask worker) writes its progress
to a small JSON file beside its result, and the process that started the tasks polls those files and shows one
tqdm bar per task on stderr (the files lie on the filesystem the results go to, shared as stores are). This is how
`memscore shadows train` shows each shadow's epochs.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .outputs import write_json
from .timing import utc_now

POLL_SECONDS = 1.0
"""How often a progress file is written at most, and how often the watcher reads them."""


class EpochProgressFile:
    """An `on_epoch` callback (`memscore.train.EpochCallback`) that writes (epoch, epochs, loss, seconds_left,
    updated) to `path`, whole or not at all: at most once per `interval` seconds, and always for the last epoch."""

    def __init__(self, path: str | os.PathLike, interval: float = POLL_SECONDS) -> None:
        self.path, self.interval, self.written = Path(path), interval, -math.inf

    def __call__(self, epoch: int, epochs: int, loss: float | None = None, seconds_left: float | None = None) -> None:
        now = time.monotonic()
        if epoch < epochs and now - self.written < self.interval:
            return
        self.written = now
        write_json(self.path, {"epoch": epoch, "epochs": epochs, "loss": loss, "seconds_left": seconds_left,
                               "updated": utc_now()}, overwrite=True)


def read_progress(path: str | os.PathLike) -> dict[str, Any] | None:
    """The progress a file holds, or None while it is missing or not (yet) a progress document."""
    try:
        progress = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(progress, dict) or not all(isinstance(progress.get(key), int) for key in ("epoch", "epochs")):
        return None
    return progress


class ProgressWatcher:
    """Shows progress files on stderr: one bar per task while it runs (from when its file first appears until its
    last epoch: epochs, loss and the time left the trainer estimates) and one counting finished tasks. As a context manager it
    polls the files every `interval` seconds in a thread until the block ends, however it ends; `show=False` shows
    and polls nothing by itself."""

    def __init__(self, files: Mapping[str, Path], *, total: int, done: int = 0, desc: str = "done",
                 unit: str = "task", interval: float = POLL_SECONDS, show: bool = True) -> None:
        self.files, self.interval, self.show, self.done = dict(files), interval, show, done
        self.overall = tqdm(total=total, initial=done, desc=desc, unit=unit, disable=not show, file=sys.stderr)
        self.bars: dict[str, tqdm] = {}
        self.shown: dict[str, dict[str, Any]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="progress-watcher", daemon=True)

    def poll(self) -> dict[str, dict[str, Any]]:
        """Read every progress file that is there and whole, bring the bars up to date; the progress read, by label."""
        read = {label: progress for label, path in self.files.items()
                if (progress := read_progress(path)) is not None}
        for label, progress in read.items():
            if progress != self.shown.get(label):
                self._show(label, progress)
        self.overall.update(self.done - self.overall.n)
        return read

    def finished(self, note: str) -> None:
        """Count one more finished task and write `note` above the bars (the bars show it at the next poll)."""
        self.done += 1
        tqdm.write(note, file=sys.stderr)

    def __enter__(self) -> ProgressWatcher:
        if self.show:
            self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        self.poll()
        for bar in (*self.bars.values(), self.overall):
            bar.close()

    def _show(self, label: str, progress: dict[str, Any]) -> None:
        """Move the task's bar to `progress`; a task at its last epoch gives its line to the next one."""
        self.shown[label] = progress
        if label not in self.bars:
            self.bars[label] = tqdm(total=progress["epochs"], initial=progress["epoch"], desc=label, unit="epoch",
                                    leave=False, mininterval=math.inf, disable=not self.show, file=sys.stderr)
        bar = self.bars[label]  # drawn here, once per change of its file (mininterval: never by `update`)
        bar.update(progress["epoch"] - bar.n)
        shown = {}
        if progress.get("loss") is not None:
            shown["loss"] = f"{progress['loss']:.4f}"
        if progress.get("seconds_left") is not None:  # the trainer's own estimate: right after a resume too
            shown["left"] = tqdm.format_interval(progress["seconds_left"])
        if shown:
            bar.set_postfix(shown, refresh=False)
        bar.refresh()
        if progress["epoch"] >= progress["epochs"]:
            bar.close()

    def _watch(self) -> None:
        while not self.stopping.wait(self.interval):
            self.poll()
