"""``python -m lem`` is the ``lem`` command."""

from lem.cli.main import main

main()
