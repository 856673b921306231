"""lem plugin: NVML GPU energy meter."""

__version__ = "0.1.0"
