"""Faults, the recorder, the experiment runner and the Chaos Toolkit extension."""
