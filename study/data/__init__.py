"""Data stage: records and patient splits, audit, download, DICOM, the one preprocessing module, cache."""
