"""Signers and secure elements: CA keys for the authority, device keys that never leave their element."""
