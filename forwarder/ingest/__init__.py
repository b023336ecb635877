"""Ingest: Amplitude's routes, shapes and rules, and the intake that routes accepted events."""
