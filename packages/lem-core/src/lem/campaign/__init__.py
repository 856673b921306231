"""A campaign: the loop over a file's experiments and where each one runs.

``loop`` (the campaign: options, the loop over experiments), ``records`` (what it writes around each
experiment), ``ending`` (report and end-of-run table), ``executors`` (the executor interface: a local
worker process each, or this process), ``ray_executor`` (one Ray task per experiment), ``job`` (a
worker's job as plain JSON), ``worker`` (one experiment in a fresh process), ``reaper`` (ends the
processes a killed worker left behind).
"""
