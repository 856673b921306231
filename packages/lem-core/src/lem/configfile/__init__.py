"""Experiment files: reading them into configs.

``documents`` (TOML, --set, merging, sweeps), ``loading`` (experiments from a file), ``validation``
(lem-core's own checks, a built-in plugin), ``presets`` (lem-core's presets, a built-in plugin).
"""
