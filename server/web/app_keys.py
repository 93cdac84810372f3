"""Every `web.AppKey` of the application, in one place (no module globals hold state).

An HTTP-edge concern: the app factory fills them and the handlers read them; `jobs` and
`state` never see the application.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.config import Config
from server.jobs.probe import ProbeService
from server.jobs.runner import JobRunner
from server.jobs.webhooks import WebhookDeliverer
from server.state.events import EventLog
from server.state.janitor import Janitor
from server.state.sessions import Sessions
from server.storage.files import SessionFiles
from server.storage.paths import DataPaths
from server.web.bodies import Endpoint
from server.web.metrics import Metrics
from server.web.tus import TusUploads
from server.web.upload_flow import UploadFlow, UploadSlots

CONFIG = web.AppKey("config", Config)
PATHS = web.AppKey("paths", DataPaths)
FILES = web.AppKey("files", SessionFiles)
HUB = web.AppKey("hub", EventLog)
SESSIONS = web.AppKey("sessions", Sessions)
RUNNER = web.AppKey("runner", JobRunner)
UPLOADS = web.AppKey("uploads", UploadSlots)
UPLOAD_FLOW = web.AppKey("upload_flow", UploadFlow)
TUS = web.AppKey("tus", TusUploads)
PROBES = web.AppKey("probes", ProbeService)
WEBHOOKS = web.AppKey("webhooks", WebhookDeliverer)
METRICS = web.AppKey("metrics", Metrics)
JANITOR = web.AppKey("janitor", Janitor)
# Made from the route table when the routes are registered: the document and the index.
OPENAPI = web.AppKey("openapi", dict[str, Any])
ENDPOINTS = web.AppKey("endpoints", list[Endpoint])
