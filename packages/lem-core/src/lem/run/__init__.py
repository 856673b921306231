"""Running one experiment in this process.

``runner`` (the steps: meter, load, idle, warm-up, cycles, summary), ``live`` (the running experiment
and its energy windows), ``cycles`` (the measured cycles), ``passes`` (serving the prompt set),
``traffic`` (arrival schedules), ``meters`` (opening energy meters), ``progress`` (the live lines),
``environment`` (what the machine is).
"""
