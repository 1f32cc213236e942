"""The progress bar `farm wait` and `farm submit --wait` draw on a terminal."""

from __future__ import annotations

import io

import pytest

from buildcat.display import ProgressDisplay


class Terminal(io.StringIO):
    """A terminal whose user presses Ctrl-C the moment a bar has reached the screen."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupt_after_write = False

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.interrupt_after_write:
            self.interrupt_after_write = False
            raise KeyboardInterrupt  # SIGINT lands just after the bar was written
        return written


STATUS = {"id": "J", "state": "running", "total": 1, "tasks": {"leased": 1}}


def test_ctrl_c_right_after_the_bar_is_drawn_still_ends_its_line() -> None:
    # Seen on a loaded machine: `farm: interrupted` was printed on the bar's own line.
    terminal = Terminal()
    display = ProgressDisplay(stream=terminal)
    terminal.interrupt_after_write = True
    with pytest.raises(KeyboardInterrupt):
        display.update(STATUS)
    display.close()
    assert terminal.getvalue().startswith("\r[")
    assert terminal.getvalue().endswith("\n")


def test_the_bar_is_redrawn_in_place_and_ended_once() -> None:
    terminal = Terminal()
    display = ProgressDisplay(stream=terminal)
    display.update(STATUS)
    display.update({**STATUS, "state": "done", "tasks": {"done": 1}})
    display.close()
    text = terminal.getvalue()
    assert text.count("\r[") == 2 and text.count("\n") == 1 and text.endswith("\n")
    assert "[" + "#" * 30 + "] J done: 1/1 tasks" in text
