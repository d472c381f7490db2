"""Onysoft AI Gateway runtime package (shipped to Lambda as the core layer)."""
