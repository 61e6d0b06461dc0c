"""Data stage: records and patient splits, audit, download, DICOM, preprocessing, cache."""
