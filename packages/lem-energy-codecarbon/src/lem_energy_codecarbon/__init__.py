"""lem plugin: CPU, RAM and GPU energy and CO2-equivalent from CodeCarbon's offline tracker."""

__version__ = "0.3.0"
