"""The HTTP edge: routes, handlers, middlewares, wire bodies, SSE, uploads, the page.

May import `server.jobs`, `server.state` and `protocol`; nothing below imports it.
"""
