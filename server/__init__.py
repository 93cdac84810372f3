"""The aiohttp application: HTTP edge, session store, job runner and event fan-out."""
