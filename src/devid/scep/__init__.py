"""SCEP (RFC 8894): a second enrollment protocol over the authority's one enrollment service."""
