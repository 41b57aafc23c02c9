"""Publishing certificate status over HTTP: OCSP, CRLs, filters (the plain-HTTP status port)."""
