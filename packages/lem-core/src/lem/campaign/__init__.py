"""A campaign: the loop over a file's experiments and where each one runs.

``loop`` (the campaign), ``worker`` (one experiment in a fresh process), ``ray_executor`` (one Ray task
per experiment), ``reaper`` (ends the processes a killed worker left behind).
"""
