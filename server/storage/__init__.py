"""Storage: where session files live (`SessionFiles`): folders under DATA_DIR, or a bucket
of any S3-compatible store, so that the nodes of a cluster share no disk. Imports only
`server.version` of the server: it knows no sessions, no jobs and no HTTP routes.
"""
