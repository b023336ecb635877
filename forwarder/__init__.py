"""forwarder: an Amplitude-compatible event streaming daemon for Iterable."""

__version__ = "0.1.0"
