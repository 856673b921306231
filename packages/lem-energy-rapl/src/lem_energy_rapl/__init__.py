"""lem plugin: CPU package and DRAM energy from Linux powercap RAPL."""

__version__ = "0.3.0"
