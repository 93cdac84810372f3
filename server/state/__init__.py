"""State: the session model, the session service, its stores, the event log and the
expiry sweep. May import `protocol`, `server.storage` (where files live) and
`server.version` only: it knows no jobs and no HTTP.
"""
