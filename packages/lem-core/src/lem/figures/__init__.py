"""The figures lem computes from raw measurements.

``requests`` (per-request and per-cycle figures from token events), ``energy`` (a window's energy,
idle and dynamic), ``stats`` (means, intervals, t quantiles), ``flops``, ``goodput``, ``steady``
(steady-state window), ``attribution`` (prefill/decode split), ``precision`` (the stop rule of a
precision target), ``thermal``, ``digests``, ``outcome`` (ok, degraded or failed from the requests),
``summary`` (a cycle's and an experiment's figures).
"""
