"""Jobs: the queue, the runner that supervises one worker process per job, warm workers,
and the probe. May import `server.state` and `protocol`, never aiohttp or `server.web`.
"""
