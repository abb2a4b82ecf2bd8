"""The ground floor: what every layer of the harness may import.

Errors (one exception tree), the clock (real and fake), the run timeline, the
metric sample type, reading a user's JSON/YAML file, and ``poll_until``. It
imports nothing of the project (an import-linter contract keeps it so).
"""
