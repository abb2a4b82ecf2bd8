"""Game days: a runbook of ordered steps run with a room of people (``rto gameday``)."""
