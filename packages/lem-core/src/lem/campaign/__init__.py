"""A campaign: the loop over a file's experiments and where each one runs.

``loop`` (the campaign and its options), ``executors`` (a local worker process each, or this
process), ``ray_executor`` (one Ray task each), ``job`` (a worker's job as JSON), ``worker`` (one
experiment in a fresh process), ``records`` (what the campaign writes around its experiments),
``ending`` (the report and the table), ``reaper`` (ends the processes a killed worker left behind).
"""
