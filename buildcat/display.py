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
        self.started = time.monotonic()
        self.last_line = ""
        self.last_done = -1

    def update(self, status: dict[str, Any]) -> None:
        counts = status.get("tasks", {})
        total = status.get("total") or sum(counts.values()) or 1
        done = counts.get("done", 0)
        running = counts.get("leased", 0)
        failed = counts.get("failed", 0)
        fraction = min(max(float(status.get("progress", done / total)), 0.0), 1.0)
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and done < total else "-"
        text = (
            f"{status.get('id', '')} {status.get('state', '')}: {done}/{total} tasks "
            f"{fraction:4.0%}, {running} running"
            + (f", {failed} failed" if failed else "")
            + f", {elapsed:.1f}s elapsed, eta {eta}"
        )
        if self.tty:
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            line = f"\r[{bar}] {text}"
            self.stream.write(line + " " * max(0, len(self.last_line) - len(line)))
            self.last_line = line
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
