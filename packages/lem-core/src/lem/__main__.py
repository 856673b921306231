"""``python -m lem`` is the ``lem`` command."""

from lem.cli import main

main()
