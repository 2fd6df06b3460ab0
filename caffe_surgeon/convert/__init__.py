"""Conversion between model formats."""
