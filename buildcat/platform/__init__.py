"""What differs between Linux, macOS and Windows, chosen here once by ``sys.platform``.

The rest of buildcat calls ``buildcat.platform.X`` and never a POSIX-only or Windows-only
function itself: stopping on a signal or a console event, starting a program in a group
of its own that dies with its starter, cancelling and ending it, the server's lock.

- :mod:`~buildcat.platform.posix` (Linux, and other POSIX): signals, process groups,
  ``PR_SET_PDEATHSIG``, ``fcntl`` locks.
- :mod:`~buildcat.platform.darwin` (macOS): as POSIX, with a parent-death watchdog in
  place of ``PR_SET_PDEATHSIG``.
- :mod:`~buildcat.platform.windows`: console control events, a kill-on-close job
  object, ``msvcrt`` locks.

Linux is what the test suite runs on; Windows and macOS are type-checked
(``mypy --platform win32`` / ``darwin``) and their logic is tested with fakes.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":
    from buildcat.platform.windows import *  # noqa: F403
elif sys.platform == "darwin":
    from buildcat.platform.darwin import *  # noqa: F403
else:
    from buildcat.platform.posix import *  # noqa: F403
