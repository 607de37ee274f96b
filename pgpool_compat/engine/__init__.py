"""The one engine under every pool face.

``core`` decides (no I/O, no lock), ``threaded`` and ``asyncio`` run it, ``entry`` is one
connection's state, ``checks`` the liveness policy, ``stats`` the counters, figures and the
registry of live pools, ``log`` the one log vocabulary. See docs/architecture.md.
"""
