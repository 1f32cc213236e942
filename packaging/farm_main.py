"""The single executable's entry point (``packaging/build.py``): a ``python`` command
line the farm gives its own executable (see :mod:`buildcat.bundle`), else ``farm``."""

import sys

from buildcat import bundle

if bundle.FROZEN and bundle.python_invocation(sys.argv[1:]):
    bundle.run_as_python(sys.argv[1:])
else:
    from buildcat.cli import main

    main()
