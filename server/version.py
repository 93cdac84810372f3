"""What the service calls itself: in the service index, the OpenAPI document and webhooks.

A module of its own, importable from every layer, so that naming the service never pulls
in the settings (`server.config`) or anything else.
"""

SERVICE_NAME = "smolvlm-video-server"
# Kept equal to setup.cfg's version (a test checks it): the service is often run from a
# checkout that was never pip-installed, so package metadata cannot be relied on.
VERSION = "0.1.0"
