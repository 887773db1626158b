"""DICOM networking (DIMSE): Tessera as an SCP for modalities and PACS, and as an SCU towards them."""
