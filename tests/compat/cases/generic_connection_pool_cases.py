"""Scenarios run on ``generic_connection_pool`` and on
``pgpool_compat.compat.generic_connection_pool``."""
