"""Inspection tools (placeholder, being written)."""
