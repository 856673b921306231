"""lem plugin: NVML GPU energy meter."""

__version__ = "0.3.0"
