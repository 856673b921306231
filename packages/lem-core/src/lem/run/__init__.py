"""Running one experiment in this process.

``runner`` (the steps: load, idle, warm-up, cycles, summary), ``live`` (the experiment while it runs),
``cycles`` (the measured cycles), ``passes`` (serving the prompt set), ``traffic`` (arrival schedules),
``meters`` (opening energy meters, several as one), ``progress`` (the live lines), ``environment``
(what the machine is), ``hub`` (Hub models checked up front where there is no network).
"""
