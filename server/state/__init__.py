"""State: the session model, the session service, its stores, the event log, where files
live, and the expiry sweep. May import `protocol` (and `server.version`) only: it knows no
jobs and no HTTP.
"""
