"""Jobs: the queue, the runner that supervises one worker process per job, warm workers,
the probe processes, and webhook delivery when a job ends. May import `server.state`,
`server.version` and `protocol`, never `server.web` nor `server.config` (settings come as
arguments); aiohttp only as the webhooks' HTTP client.
"""
