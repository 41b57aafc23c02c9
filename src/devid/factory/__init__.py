"""The production-line station: secure elements in, tested devices with IDevIDs out."""
