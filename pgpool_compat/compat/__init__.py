"""Faces for the pool libraries pgpool_compat was founded on, so their users change only the
import line (see docs/migrating.md):

- ``pgpool_compat.compat.nextorm``: ``nextorm.pool`` (``ConnectionPool``,
  ``AsyncConnectionPool``, ``PoolTimeoutError``);
- ``pgpool_compat.compat.generic_connection_pool``: the ``generic_connection_pool`` package
  (endpoint-keyed pools, connection managers, socket managers);
- ``pgpool_compat.compat.escudeiro``: escudeiro's ``AsyncPool``.

Each face only configures a pgpool_compat pool and translates names and errors: waiting,
expiry and the books are the engine's. Resources are never hashed, tagged or wrapped.
"""
