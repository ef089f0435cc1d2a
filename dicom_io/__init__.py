"""Beam-free domain code of dicomflow: headers, geometry, pixels, volumes, tables, storage."""

__version__ = "0.1.0"
