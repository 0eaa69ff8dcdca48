"""territoria: prioritisation engine for territorial inequalities in France."""

__version__ = "0.1.0"
