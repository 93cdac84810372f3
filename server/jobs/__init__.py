"""Jobs: the queue, the runner that supervises one worker process per job, warm workers,
the probe processes, and webhook delivery when a job ends. May import `server.state` and
`protocol`, never `server.web`; aiohttp only as the webhooks' HTTP client.
"""
