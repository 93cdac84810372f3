"""The runner checks a worker's results where they arrive: a result that breaks the
contract (protocol/results.py) fails its job at once, saying why; a bad partial item is
logged and dropped, and the job goes on (the final result repeats every item)."""

from __future__ import annotations

import logging

from protocol import WorkerHighlightsResults
from server.state.models import SessionStatus
from tests.server.jobs.test_runner import replay


async def test_a_result_that_breaks_the_contract_fails_the_job_saying_what_and_where(
    make_runner, caplog
):
    caplog.set_level(logging.INFO)
    harness = await make_runner()
    session = await harness.submit("broken_result")
    done = await harness.finished(session.id)
    assert done.status is SessionStatus.FAILED
    assert done.results is None
    assert done.error.startswith("The worker's results broke the contract: ")
    assert "$.highlights[0].significance" in done.error
    logged = [r.getMessage() for r in caplog.records if r.name == "server.jobs.runner"]
    failed = next(line for line in logged if f"session {session.id} failed" in line)
    assert '"significance": 0' in failed or "'significance': 0" in failed  # the detail


async def test_a_partial_item_that_breaks_its_type_is_logged_and_dropped(make_runner, caplog):
    harness = await make_runner()
    session = await harness.submit("bad_partial")
    done = await harness.finished(session.id)
    assert done.status is SessionStatus.COMPLETED
    assert isinstance(done.results, WorkerHighlightsResults)
    events = await replay(harness, session.id)
    assert [event for event in events if event.name == "partial"] == []
    assert any(
        "bad partial event" in r.getMessage() and "start_time" in r.getMessage()
        for r in caplog.records
        if r.name == "server.jobs.runner"
    )
