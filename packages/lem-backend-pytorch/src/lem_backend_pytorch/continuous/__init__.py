"""``[pytorch] engine = "continuous"``: transformers' continuous batching on lem's serving driver.

:mod:`~lem_backend_pytorch.continuous.engine` starts, serves and closes the
manager; :mod:`~lem_backend_pytorch.continuous.options` is the
``[pytorch.continuous]`` table and its checks (no torch or transformers at
import: ``validate_config`` reads it).
"""
