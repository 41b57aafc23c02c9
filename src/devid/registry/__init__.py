"""The fleet registry: manufacturer CAs (proof-of-possession registration, JITR), enrollment groups
and individual enrollments, hubs and allocation, and the events these produce.

The authority decides and signs; the registry tells it which devices are admitted, under which
renewal policy, and where they go. Every change bumps the registry generation in its own
transaction, so every server process sharing the store sees it.
"""
