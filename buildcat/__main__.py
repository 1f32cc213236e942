"""``python -m buildcat`` is the ``farm`` command."""

from buildcat.cli import main

main()
