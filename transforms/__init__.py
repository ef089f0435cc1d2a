"""Composite PTransforms of dicomflow: they only wire dicom_io functions together."""
