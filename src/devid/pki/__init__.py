"""Pure X.509 knowledge: profiles, CSR checks, key policy, serials, encodings. No I/O."""
