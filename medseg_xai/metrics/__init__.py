"""Segmentation metrics (being written)."""
