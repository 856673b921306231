"""The ``lem`` command: ``main`` (run, config, plugins, models) and ``results`` (results and report)."""
