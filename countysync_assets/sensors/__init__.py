"""Sensors: the change sensor that keeps every output in step with the source."""
