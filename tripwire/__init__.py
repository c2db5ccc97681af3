"""Tripwire: self-hosted event tracking collector and trigger rules engine.

The spine: the event envelope, config and the event log. Kept light so a room
importing the envelope does not pull in the CLI or a backend.
"""

__version__ = "0.1.0"
