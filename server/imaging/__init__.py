"""Pixel data: decoding stored frames and rendering them for display."""
