"""The figures lem computes from raw measurements.

``requests`` (per-request and per-cycle figures from token events), ``energy`` (an energy window's
figures: total, idle, dynamic, peak power), ``stats`` (means, intervals, t quantiles), ``flops``,
``goodput``, ``steady`` (steady-state window), ``attribution`` (prefill/decode split), ``precision``
(stop rule for a precision target), ``thermal``, ``digests``, ``summary`` (a cycle's and an
experiment's figures).
"""
