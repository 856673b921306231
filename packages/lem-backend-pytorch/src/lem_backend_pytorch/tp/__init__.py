"""Tensor parallelism (``[sharding] tensor_parallel_size = N``): N ranks, one process each.

- :mod:`~lem_backend_pytorch.tp.leader`: rank 0 (the experiment's worker) starts,
  feeds, watches and stops the followers;
- :mod:`~lem_backend_pytorch.tp.follower`: ranks 1..N-1
  (``python -m lem_backend_pytorch.tp.follower``);
- :mod:`~lem_backend_pytorch.tp.shard`: what every rank does to join the group
  and build its shard;
- :mod:`~lem_backend_pytorch.tp.checks`: what tensor parallelism refuses, for
  ``validate_config`` and at load (no torch at import).
"""
