"""Ready connection managers: TCP, SSL and Unix sockets (sync), sockets and streams (asyncio)."""
