"""Terminal output for people: job progress (a live bar on a terminal, lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class ProgressDisplay:
    """Feed it job statuses; it draws a bar on a terminal or prints a line per change."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.width = width
        self.last_line = ""
        self.last_done = -1

    def update(self, status: dict[str, Any]) -> None:
        counts = status.get("tasks", {})
        total = status.get("total") or sum(counts.values()) or 1
        done = counts.get("done", 0)
        running = counts.get("leased", 0)
        failed = counts.get("failed", 0)
        fraction = min(max(float(status.get("progress", done / total)), 0.0), 1.0)
        elapsed = job_elapsed(status)
        rate = done / elapsed if elapsed > 0 else 0.0
        left = None
        if done < total and 0 < fraction < 1:
            left = elapsed * (1 - fraction) / fraction
        frames = status.get("frames")
        text = (
            f"{status.get('id', '')} {status.get('state', '')}: {done}/{total} tasks "
            f"{fraction:4.0%}"
            + (f", frames {frames['done']}/{frames['total']}" if frames else "")
            + f", {running} running"
            + (f", {failed} failed" if failed else "")
            + f", {rate:.1f} tasks/s, {elapsed:.1f}s elapsed, eta {duration(left)}"
        )
        if self.tty:
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            line = f"\r[{bar}] {text}"
            padding = " " * max(0, len(self.last_line) - len(line))
            # Known before it is written: the "\r" flushes it to the terminal at once, and a
            # Ctrl-C right then must still find a bar for close() to end with its newline.
            self.last_line = line
            self.stream.write(line + padding)
            self.stream.flush()
        elif text != self.last_line and (
            done != self.last_done or status.get("state") in ("done", "failed", "cancelled")
        ):
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_line = text
        self.last_done = done

    def close(self) -> None:
        if self.tty and self.last_line:
            self.stream.write("\n")
            self.stream.flush()


def job_elapsed(status: dict[str, Any]) -> float:
    """Seconds from the job's start to its end, or to now while it runs (0 before it
    starts): a wait that begins late, or on a finished job, measures the job itself."""
    started = status.get("started_at")
    if not isinstance(started, (int, float)):
        return 0.0
    finished = status.get("finished_at")
    end = finished if isinstance(finished, (int, float)) else time.time()
    return max(0.0, end - started)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the last column is left ragged."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``4m 05s``, ``2h 03m``; ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"
