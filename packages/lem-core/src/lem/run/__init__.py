"""Running one experiment in this process.

``runner`` (load, idle, warm-up, cycles, summary), ``passes`` (one pass of requests), ``traffic``
(arrival schedules), ``meters`` (opening energy meters), ``progress`` (the live lines),
``environment`` (what the machine is).
"""
