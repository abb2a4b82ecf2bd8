"""Healers that recover workloads while a fault is in place: watchdog, eviction, migration."""
