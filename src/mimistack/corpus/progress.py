"""The progress bar of a tokenize-corpus run: files, audio hours and throughput on stderr, with rich.

Sits on rich only; used by `units.UnitSink`, whichever runner feeds it (the Ray runner disables Ray's own bars
while this one runs).
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


class TokenizeProgress:
    """Nothing when disabled or when stderr is not a terminal."""

    def __init__(self, enabled: bool, total_files: int, done_files: int) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        if not enabled:
            return
        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self.bar = Progress(
            TextColumn("tokenizing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            TextColumn("{task.fields[hours]:.2f} h audio, {task.fields[speed]:.0f} audio s/s"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.bar.add_task("tokenizing", total=total_files, completed=done_files, hours=0.0, speed=0.0)
        self.bar.start()

    def update(self, files: int, audio_seconds: float, elapsed: float) -> None:
        """`files` more are done; `audio_seconds` of audio were encoded in the `elapsed` seconds of this run."""
        if self.bar is not None and self.task is not None:
            self.bar.update(
                self.task, advance=files, hours=audio_seconds / 3600, speed=audio_seconds / max(elapsed, 1e-9)
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
