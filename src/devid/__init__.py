"""devid: cryptographic identity for every device of an IoT fleet, from factory to revocation."""

__version__ = "0.1.0"
