"""Themes shipped with quantbench."""
