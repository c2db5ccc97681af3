"""The ``tripwire`` command: the one place that wires the rooms together."""
