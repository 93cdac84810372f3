"""`python -m inference_worker`: one job per process, events as JSON lines on stdout.

Three ways in:
  * from the server: no arguments (or `--model` to preload it, for a warm worker); the
    JobSpec arrives as one JSON line on stdin, and stdin's end means the server is gone;
  * by hand: `--video PATH --analysis highlights|workout [--params JSON] [--model M]
    [--output-dir DIR]` prints the same event lines;
  * `--probe PATH [--filename NAME]`: checks a video and prints one terminal event whose
    results are {"video": VideoInfo};
  * `--probe-service`: the same check for every request line on stdin, one answer each
    (inference_worker/probe_service.py); the server keeps one running to vet uploads.

Exit status: 0 after a `result`, 1 after an `error`, 2 for a bad command line or JobSpec,
143 when terminated.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from typing import TYPE_CHECKING

from inference_worker.channel import (
    EXIT_TERMINATED,
    EventChannel,
    JobInbox,
    Terminated,
    install_sigterm_handler,
)
from inference_worker.compute import use_fast_blas
from protocol import (
    DEFAULT_MODEL,
    Error,
    ErrorCode,
    JobSpec,
    ModelReport,
    ModelState,
    ParamsError,
    ProbeRequest,
    ProtocolError,
    Result,
    decode_job,
    parse_analysis_type,
    parse_params_json,
)

if TYPE_CHECKING:
    # Imported where used: the job's modules bring mlx_vlm, which a probe never needs.
    from inference_worker.job import ModelSlot

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m inference_worker",
        description="Analyse one video with SmolVLM2; events are printed as JSON lines.",
    )
    parser.add_argument("--video", help="video to analyse (by-hand mode)")
    parser.add_argument("--analysis", default="highlights", help="highlights or workout")
    parser.add_argument("--params", default="{}", help='JSON object, e.g. {"segment_seconds": 5}')
    parser.add_argument(
        "--model",
        default=None,
        help=f"Hugging Face id or local path (default: $SMOLVLM_MODEL or {DEFAULT_MODEL}); "
        "without --video it is preloaded before the JobSpec is read",
    )
    parser.add_argument("--output-dir", help="where artifacts go (default: ./<video>-<analysis>)")
    parser.add_argument("--probe", metavar="PATH", help="only check a video and print its facts")
    parser.add_argument("--filename", default="", help="the name to report for --probe")
    parser.add_argument(
        "--probe-service", action="store_true", help="check the videos named on stdin"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    channel = EventChannel.claim_stdout()  # first: nothing may print on the event channel
    install_sigterm_handler()
    logging.basicConfig(
        level=os.environ.get("WORKER_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s",
    )
    # Before anything imports mlx: the fast BLAS must be in place when MLX's library loads.
    use_fast_blas()
    args = parse_args(argv)
    try:
        if args.probe_service:
            from inference_worker.probe_service import serve

            serve(channel, sys.stdin.buffer)
            return EXIT_OK
        if args.probe:
            return _probe(channel, args.probe, args.filename)
        return _run(channel, args)
    except Terminated:
        return EXIT_TERMINATED


def _probe(channel: EventChannel, path: str, filename: str) -> int:
    from inference_worker.probe_service import answer

    terminal = answer(ProbeRequest(path, filename))
    channel.emit(terminal)
    return EXIT_OK if isinstance(terminal, Result) else EXIT_FAILED


def _run(channel: EventChannel, args: argparse.Namespace) -> int:
    from inference_worker.job import ModelSlot, run_job

    models = ModelSlot()
    if args.video:
        try:
            spec = _spec_from_args(args)
        except (ParamsError, ProtocolError) as exc:
            channel.emit(Error(ErrorCode.INVALID_PARAMS.value, str(exc)))
            return EXIT_USAGE
    else:
        # From now on the server going away stops this process, even mid-preload.
        inbox = JobInbox(busy_first=bool(args.model))
        if args.model:
            _preload(channel, models, args.model)
        line = inbox.job_line()
        if not line:
            return EXIT_OK  # the server closed our stdin before giving a job: nothing to do
        try:
            spec = decode_job(line)
        except ProtocolError as exc:
            channel.emit(Error(ErrorCode.INVALID_JOB.value, str(exc)))
            return EXIT_USAGE
        inbox.stop_when_closed()
    terminal = run_job(spec, channel.emit, models)
    channel.emit(terminal)
    return EXIT_OK if isinstance(terminal, Result) else EXIT_FAILED


def _preload(channel: EventChannel, models: ModelSlot, model: str) -> None:
    """Load the model before the job arrives and tell the server whether it could.

    A failure is reported again, as the job's error, when the job runs.
    """
    from inference_worker.model import ModelUnavailable

    try:
        models.get(model)
    except ModelUnavailable as exc:
        logging.getLogger("inference_worker").warning("preload failed: %s", exc)
        channel.emit(ModelReport(ModelState.UNAVAILABLE, str(exc)))
        return
    channel.emit(ModelReport(ModelState.READY))


def _spec_from_args(args: argparse.Namespace) -> JobSpec:
    analysis_type = parse_analysis_type(args.analysis)
    stem = os.path.splitext(os.path.basename(args.video))[0]
    return JobSpec(
        session_id=str(uuid.uuid4()),
        analysis_type=analysis_type,
        video_path=args.video,
        output_dir=args.output_dir or f"{stem}-{analysis_type.value}",
        model=args.model or os.environ.get("SMOLVLM_MODEL") or DEFAULT_MODEL,
        params=parse_params_json(args.params),
        filename=os.path.basename(args.video),
    )


if __name__ == "__main__":
    status = main()
    # Leave without interpreter teardown. Every event is already written and flushed and
    # every artifact renamed or removed by now; tearing down MLX and the imported modules
    # costs ~0.2 s of CPU, which with many workers sharing two cores stretches into
    # seconds of a cancel waiting for the process to be gone (measured: cancel p99 2.5 s).
    sys.stderr.flush()
    os._exit(status)
