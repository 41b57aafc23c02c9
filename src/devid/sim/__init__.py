"""Fleet simulation: many devices, connectivity gaps, renewal policies, years in seconds."""
