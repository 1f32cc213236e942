"""The single executable's entry point (``packaging/build.py``): ``farm``, or ``python``
command lines the farm gives its own executable (see :mod:`buildcat.bundle`)."""

from buildcat.bundle import main

main()
