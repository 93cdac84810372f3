"""Accepting a video: an upload received, checked and probed becomes a session in its
first real state.

Without an analysis type the session is `uploaded` (the two-step flow); with one it is
handed to the runner already `pending`, which queues and stores it in one step, so its
first status is `pending` with its queue position (or, a moment later, `processing`).
Whatever rejects an upload - size, params, probe, length, a full queue, a vanished
client, a store that went away - its file goes with it (a local file, or an object and
its unfinished multipart upload), so a rejected upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from protocol import (
    AnalysisType,
    VideoInfo,
    params_from_form,
    parse_analysis_type,
    parse_params_json,
    validate_params,
)
from server.jobs.job_queue import RETRY_AFTER_SECONDS
from server.jobs.probe import ProbeService
from server.jobs.runner import JobRunner
from server.jobs.webhooks import WebhookDeliverer
from server.state.models import (
    QueueFull,
    Session,
    SessionNotFound,
    SessionStatus,
    TooManyUploads,
)
from server.state.sessions import Sessions
from server.state.webhook_delivery import WebhookDelivery
from server.storage.files import SessionFiles, Upload
from server.web.multipart import ReceivedForm, receive_form, too_large
from server.web.responses import ApiError

# Room for boundaries and text fields on top of the file when judging Content-Length.
FORM_OVERHEAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AskedJob:
    """What an upload asks for: an analysis (or none: the two-step flow), and a webhook."""

    analysis_type: AnalysisType | None
    params: dict[str, Any]
    webhook: WebhookDelivery | None


@dataclass(frozen=True)
class UploadLimits:
    """How big an upload may be, and how long its video."""

    max_bytes: int
    max_video_seconds: float


class UploadSlots:
    """The uploads being received now: at most `limit` at once, and whose folders they own.

    The limit keeps a burst of large uploads from taking every connection and the disk's
    bandwidth; the registry tells the expiry sweep which folders without a session are
    still being written (a session is created only once its upload is complete, a
    resumable upload's record only once its file exists).
    """

    # Uploads finish in seconds to minutes; a short wait is the honest hint.
    RETRY_AFTER_SECONDS = 5

    def __init__(self, limit: int, on_bytes: Callable[[int], None] | None = None) -> None:
        """`on_bytes(n)` is told of every chunk of n bytes an upload writes (for metrics)."""
        self._limit = limit
        self._ids: set[str] = set()  # holding a slot
        self._owned: set[str] = set()  # owning files, with no slot
        self.on_bytes = on_bytes or (lambda size: None)

    @contextlib.contextmanager
    def claim(self, session_id: str) -> Iterator[None]:
        """Hold a slot for `session_id` while receiving; raises TooManyUploads when full."""
        if len(self._ids) >= self._limit:
            raise TooManyUploads(self.RETRY_AFTER_SECONDS)
        self._ids.add(session_id)
        try:
            yield
        finally:
            self._ids.discard(session_id)

    @contextlib.contextmanager
    def owning(self, upload_id: str) -> Iterator[None]:
        """Mark `upload_id`'s files as being written while the block runs, without a slot:
        a resumable upload's, between its file and its record."""
        self._owned.add(upload_id)
        try:
            yield
        finally:
            self._owned.discard(upload_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._ids or session_id in self._owned

    def __len__(self) -> int:
        return len(self._ids)


class UploadFlow:
    """Turns an upload request into a session: built once per app with what it needs."""

    def __init__(
        self,
        *,
        sessions: Sessions,
        runner: JobRunner,
        files: SessionFiles,
        limits: UploadLimits,
        slots: UploadSlots,
        probes: ProbeService,
        webhooks: WebhookDeliverer,
    ) -> None:
        self._sessions = sessions
        self._runner = runner
        self._files = files
        self._limits = limits
        self._slots = slots
        self._probes = probes
        self._webhooks = webhooks

    async def accept(
        self, request: web.Request, legacy_type: AnalysisType | None = None
    ) -> Session:
        """Stream, validate and probe an upload; its session, `uploaded` or queued.

        `legacy_type` is the legacy endpoints' analysis type: their non-file fields are
        params, and they take no webhook. Without it, `analysis_type`, `params` and
        `webhook_url` come from the form, and a missing type means the two-step flow.
        Raises ApiError or a domain error; never leaves files.
        """
        if not await self._runner.has_room():
            raise QueueFull(RETRY_AFTER_SECONDS)
        declared = request.content_length
        if declared is not None and declared > self._limits.max_bytes + FORM_OVERHEAD_BYTES:
            raise too_large(self._limits.max_bytes)  # refused before a byte is read
        session_id = str(uuid.uuid4())
        with self._slots.claim(session_id):
            return await self._accept(request, session_id, legacy_type)

    async def _accept(
        self, request: web.Request, session_id: str, legacy_type: AnalysisType | None
    ) -> Session:
        locations: list[str] = []

        async def open_upload(filename: str) -> Upload:
            locations.append(self._files.upload_location(session_id, filename))
            return await self._files.start_upload(locations[-1])

        form = await receive_form(  # on any error it has aborted the upload it began
            request,
            open_upload,
            max_bytes=self._limits.max_bytes,
            before_file=lambda fields: _job_of(fields, legacy_type, complete=False),
            on_bytes=self._slots.on_bytes,
        )
        assert form.upload is not None  # receive_form raises without a file
        try:
            return await self._create(session_id, form, locations[-1], legacy_type)
        except BaseException:
            # Also on cancellation: the client went away, and so does everything it sent.
            # Shielded: a second cancel must not leave the file half-removed.
            await asyncio.shield(form.upload.abort())
            raise

    async def _create(
        self,
        session_id: str,
        form: ReceivedForm,
        location: str,
        legacy_type: AnalysisType | None,
    ) -> Session:
        """The session of a received form whose file is at `location`."""
        job = await self.job_of(form.fields, legacy_type)
        return await self.become_session(session_id, location, form.filename, form.size, job)

    async def job_of(
        self, fields: dict[str, str], legacy_type: AnalysisType | None = None
    ) -> AskedJob:
        """What the request's fields ask for, validated (400 for a bad type, params or
        webhook_url). The multipart and the resumable upload both ask this way."""
        analysis_type, params = _job_of(fields, legacy_type, complete=True)
        webhook = None
        if legacy_type is None:
            webhook = await self._webhooks.target(fields.get("webhook_url"))
        return AskedJob(analysis_type, params, webhook)

    async def become_session(
        self, session_id: str, location: str, filename: str, size: int, job: AskedJob
    ) -> Session:
        """The session of a whole upload at `location`: probed, then stored `uploaded`, or
        queued `pending` with its job. Raises what refuses it (415, 422, 503); the caller
        then removes the file."""
        session = Session(
            id=session_id,
            status=SessionStatus.UPLOADED,
            video=await self._probe(location, filename, size),
            upload_path=location,
            output_dir=self._files.artifacts_location(session_id),
            webhook=job.webhook,
        )
        if job.analysis_type is not None:
            session = session.replace(
                status=SessionStatus.PENDING, analysis_type=job.analysis_type, params=job.params
            )
        try:
            if job.analysis_type is None:
                return await self._sessions.create(session)
            return await self._runner.submit_new(session)
        except BaseException:
            # A client gone while it was being stored: the session goes with its files.
            with contextlib.suppress(SessionNotFound):
                await self._sessions.delete(session_id)
            raise

    def owning(self, upload_id: str) -> contextlib.AbstractContextManager[None]:
        """While the block runs the sweep leaves `upload_id`'s files alone (see
        `UploadSlots.owning`)."""
        return self._slots.owning(upload_id)

    async def has_room(self) -> bool:
        """Whether a new job would be queued now (else an upload that asks one is a 503)."""
        return await self._runner.has_room()

    async def _probe(self, location: str, filename: str, size: int) -> VideoInfo:
        """The video's info, probed where it is stored; 422 if it is longer than allowed."""
        source = await self._files.probe_source(location)
        info = await self._probes.probe(source, filename, size=size)
        if info.duration_seconds > self._limits.max_video_seconds:
            raise ApiError(
                422,
                "Video too long",
                f"The video is {info.duration_seconds:.1f} s long; the limit is "
                f"{self._limits.max_video_seconds:g} s",
            )
        return info

    def __repr__(self) -> str:
        return f"<UploadFlow uploading={len(self._slots)}>"


def _job_of(
    fields: dict[str, str], legacy_type: AnalysisType | None, *, complete: bool
) -> tuple[AnalysisType | None, dict[str, Any]]:
    """The analysis type and validated params the form asks for.

    Called with `complete=False` for the fields seen before the file, so bad params are
    refused before the video is streamed; the final call sees every field.
    """
    if legacy_type is not None:
        extra = {name: value for name, value in fields.items() if name != "params"}
        # An empty `params` field is the same as none (a form may always send the field).
        given = fields.get("params", "").strip() != ""
        if given and extra:
            raise ApiError(
                400,
                "Invalid parameters",
                "Give params either as one `params` JSON field or as individual fields, "
                f"not both (also got {', '.join(sorted(extra))})",
            )
        raw = parse_params_json(fields["params"]) if given else params_from_form(extra)
        return legacy_type, validate_params(legacy_type, raw)
    raw = parse_params_json(fields.get("params"))
    if "analysis_type" not in fields:
        if complete and raw:
            raise ApiError(
                400,
                "Invalid parameters",
                "params need an analysis_type; without one, send them to analyze later",
            )
        return None, {}
    analysis_type = parse_analysis_type(fields["analysis_type"].strip())
    return analysis_type, validate_params(analysis_type, raw)
