"""The authority: the only code that signs. It applies policy and records before it returns."""
