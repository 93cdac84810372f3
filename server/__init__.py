"""The aiohttp application: HTTP edge, session store, job runner and event fan-out.

Layers, each importing only those below it (import-linter holds them, see setup.cfg):
`server.app` (and `__main__`) > `server.web` > `server.config` > `server.jobs` >
`server.state` > `server.storage` > `server.version`. It never imports `inference_worker`
(it starts it as a process) nor `client`.
"""
