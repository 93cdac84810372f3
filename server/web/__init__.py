"""The HTTP edge: routes, handlers, middlewares, wire bodies, SSE, uploads, the page.

May import `server.config`, `server.jobs`, `server.state`, `server.version` and `protocol`;
nothing below imports it.
"""
