"""adlib: reproducible notebooks and a small library for visual anomaly detection papers."""

__version__ = "0.1.0"
