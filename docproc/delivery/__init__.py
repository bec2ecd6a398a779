"""Telling business systems: signed webhook events, their attempts, retries and dead letters."""
