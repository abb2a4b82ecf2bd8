"""RTO analysis against the documented table: expectations, statistics, plots, renderers."""
