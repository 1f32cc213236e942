"""The child a client or the server runs job-type code in (see buildcat.jobtypes.child):

    python -m buildcat.jobtypes describe ROOT
    python -m buildcat.jobtypes compile ROOT NAME    < msgpack {"settings": {...}}

The reply is one msgpack document on stdout; what the job type prints goes to stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from buildcat import protocol
from buildcat.errors import FarmError
from buildcat.jobtypes import JobTypeBroken, SettingError, loading


def main(argv: list[str]) -> int:
    reply_to = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a print() in a job type must not land in the reply
    sys.stdout = sys.stderr
    reply: dict[str, Any]
    if len(argv) == 2 and argv[0] == "describe":
        reply = {"job_types": loading.describe(argv[1])}
    elif len(argv) == 3 and argv[0] == "compile":
        request = protocol.unpack(sys.stdin.buffer.read(), trusted=True)
        try:
            reply = {"plan": loading.compile_job(argv[1], argv[2], request["settings"])}
        except FarmError as exc:
            kind = "SettingError" if isinstance(exc, SettingError) else type(exc).__name__
            reply = {
                "error": str(exc),
                "class": "JobTypeBroken" if isinstance(exc, JobTypeBroken) else kind,
                "traceback": getattr(exc, "traceback", ""),
            }
    else:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        packed = protocol.pack(reply)
    except FarmError as exc:
        packed = protocol.pack(
            {"error": f"job type {argv[-1]!r} made tasks that cannot be sent: {exc}"}
        )
    reply_to.write(packed)
    reply_to.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
