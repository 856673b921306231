"""LLM Energy Measure: energy, throughput and latency of LLM inference, per token.

A plugin needs only ``from lem import hookimpl``.
"""

from lem.hookspecs import hookimpl

__version__ = "0.3.0"

__all__ = ["__version__", "hookimpl"]
