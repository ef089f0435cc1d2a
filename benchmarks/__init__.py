"""Benchmarks of dicomflow against dcm2niix and a naive pydicom + zarr loop (not shipped)."""
