"""``relay``: the operator's command line for a deployed relay.

relay dlq list     the dead letters' metadata (kind, status, error, relay id, age)
relay dlq show     one dead letter: attributes and body, numbers masked, text hidden
relay dlq redrive  move dead letters back to the delivery queue

Exit codes: 0 done, 1 some messages could not be moved (or found), 2 usage or configuration,
130 interrupted before anything moved, or while following a move task (which goes on).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

# boto3 and botocore come with the `ops` extra (`pip install 'webhook-relay[ops]'`, which `make
# setup` installs), not with the relay itself: without them `relay` says so and exits (main).
_MISSING: str | None = None
try:
    from botocore.exceptions import BotoCoreError, ClientError

    from relay_ops import dlq, render
    from relay_ops.config import DLQ_ENV, QUEUE_ENV, ConfigError, Target, connect
except ModuleNotFoundError as missing:
    _MISSING = (missing.name or "").partition(".")[0]
    if _MISSING not in ("boto3", "botocore"):
        raise

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType, TracebackType

OK, FAILED, USAGE = 0, 1, 2
INTERRUPTED = 130  # the shell's convention for Ctrl-C
OPS_EXTRA = "pip install 'webhook-relay[ops]'"


def _redrive_help() -> str:
    """``relay dlq redrive --help``'s description (read once dlq is imported: main)."""
    return f"""\
Move dead letters back to the delivery queue. Never loses one: each is sent before it is
deleted, and a run that stops part way is resumed by running the same command again.

--all on AWS uses SQS's message move task (StartMessageMoveTask) and follows it with a
progress bar until it ends; a task already running from the DLQ is followed, not started
again, and Ctrl-C stops following it, not the task. Unlike the message-by-message loop
(used with --kind/--status/--id, --no-move-task, --dry-run or an endpoint URL), the task
  - keeps every attribute, the old ErrorKind/ErrorStatus/ErrorMessage included: the
    delivery function ignores them, and replaces them if it parks the message again;
  - has no guard against loops: a message that fails again while the task runs is parked
    again and may be moved again by the same task. The loop leaves such messages on the
    DLQ: use --no-move-task when the cause may not be fixed for every message;
  - gives each message a new message id. A dead letter without RelayId (parked by the
    queue's redrive policy) was keyed by its message id, so before starting a task the tool
    reads the DLQ once and uses the loop if any lacks RelayId, or is too old (below); the
    loop sends such a letter with its message id as RelayId.

Dead letters older than --key-ttl (default {dlq.KEY_TTL_SECONDS} s, the stack's default
IdempotencyTtlSeconds: give yours if you changed it) may have been delivered and forgotten:
they are held back, with a warning, unless --include-stale.

Dead letters marked PossiblyDelivered had a send the provider may have accepted (its answer
never came), and the relay has no record of a delivery to recognise them by: redriven, each
is sent again. They are held back, with a warning, unless --include-possibly-delivered:
check with the provider first. Dead letters with no ErrorKind at all (moved by the queue's
redrive policy, not parked by the relay) count as possibly delivered too. While any is there,
--all uses the loop, not the task (which cannot hold them back), unless
--include-possibly-delivered.

The loop hides each message it receives from other readers until it ends: {dlq.HOLD_SECONDS} s at
first, doubling for a long scan up to --max-hold (default {dlq.MAX_HOLD_SECONDS} s). That is how
long messages can stay hidden from a rerun if the run is killed. Ctrl-C stops between
batches of ten and makes the messages held visible again at once; a second Ctrl-C stops
at once, still releasing what it holds (a receive it cuts short leaves up to ten messages
hidden for the current hold: the tool says so).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``relay`` with ``argv`` (default: the process's arguments); the exit code."""
    if _MISSING is not None:
        print(
            f"relay: {_MISSING} is not installed; the operator tool needs the ops extra: "
            f"{OPS_EXTRA}",
            file=sys.stderr,
        )
        return USAGE
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse has already explained
        return exit_.code if isinstance(exit_.code, int) else USAGE
    try:
        target = connect(
            region=args.region,
            endpoint_url=args.endpoint_url,
            stack=args.stack,
            dlq_url=args.dlq_url,
            queue_url=args.queue_url,
        )
        code: int = args.run(args, target)
    except ConfigError as error:
        print(f"relay: {error}", file=sys.stderr)
        return USAGE
    except (BotoCoreError, ClientError) as error:
        # A queue that does not exist, missing credentials or permissions: the setup's to fix.
        print(f"relay: {error}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:  # before anything moved (the redrive loop handles its own)
        return INTERRUPTED
    return code


# --- commands ---------------------------------------------------------------------------------


def list_(args: argparse.Namespace, target: Target) -> int:
    """``relay dlq list``: metadata only, never a body (bodies carry phone numbers)."""
    selection = dlq.Selection(kind=args.kind, status=args.status)
    letters = dlq.peek(target.sqs, target.need_dlq(), selection, args.limit, args.max_hold, _say)
    letters.sort(key=lambda letter: letter.sent_at or datetime.min.replace(tzinfo=UTC))
    now = datetime.now(UTC)
    if args.json:
        print(render.listing_json(letters, now))
    elif letters:
        print(render.listing(letters, now))
    else:
        print("no dead letters" + ("" if selection.everything else " match"))
    return OK


def show(args: argparse.Namespace, target: Target) -> int:
    """``relay dlq show``: one dead letter, body and every attribute (masked unless asked)."""
    letter = dlq.find(target.sqs, target.need_dlq(), args.message_id, args.max_hold, _say)
    if letter is None:
        print(f"relay: no dead letter {args.message_id}", file=sys.stderr)
        return FAILED
    print(render.detail(letter, datetime.now(UTC), unmasked=args.unmasked))
    return OK


def redrive(args: argparse.Namespace, target: Target) -> int:
    """``relay dlq redrive``: SQS's move task for --all on AWS, else receive, send, delete."""
    dlq_url = target.need_dlq()
    if args.status_of_task:
        return _task_status(target, dlq_url)
    queue_url = target.need_queue()
    selection = dlq.Selection(kind=args.kind, status=args.status, ids=frozenset(args.ids or ()))
    if args.all == (not selection.everything):
        print("relay: say what to redrive: --all, or --kind / --status / --id", file=sys.stderr)
        return USAGE
    if not args.dry_run and not _confirmed(args, selection, target, dlq_url, queue_url):
        return USAGE
    if args.all and not args.dry_run and not args.no_move_task and not target.custom_endpoint:
        code = _move_task(args, target, dlq_url, queue_url)
        if code is not None:
            return code
    return _redrive_loop(args, target, dlq_url, queue_url, selection)


def _move_task(
    args: argparse.Namespace, target: Target, dlq_url: str, queue_url: str
) -> int | None:
    """Start SQS's move task (or join the one running) and follow it to its end.

    None when the endpoint has no move tasks: the caller moves the messages itself.
    """
    try:
        task = dlq.start_move_task(
            target.sqs, dlq_url, queue_url, ready=lambda: _move_task_safe(args, target, dlq_url)
        )
    except dlq.MoveTaskUnsupported:
        print("relay: no SQS move task here; moving the messages one by one", file=sys.stderr)
        return None
    except dlq.MoveTaskBusy as busy:
        print(f"relay: {busy}", file=sys.stderr)
        return FAILED
    if task is None:
        return None
    print(render.move_task(task), flush=True)
    bar = _progress_bar(
        total=None, unit="msg", desc="move task", file=sys.stderr, disable=not _bar_wanted(args)
    )
    last: dlq.MoveProgress | None = None
    try:
        for last in dlq.follow_move_task(target.sqs, task):
            if last.to_move is not None:
                bar.total = last.to_move
            # Readings come seconds apart: show each one (tqdm would skip some as too soon).
            bar.n = last.moved
            bar.refresh()
    except KeyboardInterrupt:
        bar.close()  # before the message, not after it (finally closes it again: a no-op)
        print(
            f"relay: stopped following move task {task.handle}; SQS goes on moving: run the "
            "same command to follow it again",
            file=sys.stderr,
        )
        return INTERRUPTED
    except dlq.MoveTaskLost as lost:
        print(f"relay: {lost}", file=sys.stderr)
        return FAILED
    finally:
        bar.close()
    if last is None:  # follow_move_task yields until the task ends; this is for the type
        return FAILED
    completed = last.status == "COMPLETED"
    print(
        render.move_result(last, dlq.approximate_count(target.sqs, dlq_url) if completed else None)
    )
    if not completed:
        print(
            f"relay: the move task ended {last.status} ({last.failure or 'no reason given'}); "
            "what it did not move is still on the DLQ: run the same command again",
            file=sys.stderr,
        )
        return FAILED
    return OK


def _move_task_safe(args: argparse.Namespace, target: Target, dlq_url: str) -> bool:
    """Whether SQS's move task may move every dead letter; if not, says why on stderr."""
    key_ttl = _key_ttl(args)
    found = dlq.survey(target.sqs, dlq_url, key_ttl, args.max_hold, _say)
    reasons = []
    if found.unkeyed:
        reasons.append(
            f"{found.unkeyed} carry no key (no RelayId, IdempotencyKey or idempotency_key: "
            "the task would give them new message ids, and the relay would not recognise one "
            "it delivered)"
        )
    if found.stale and not key_ttl.include_stale:
        reasons.append(f"{found.stale} are older than --key-ttl (the task cannot hold them back)")
    if found.possibly_delivered and not args.include_possibly_delivered:
        reasons.append(
            f"{found.possibly_delivered} are possibly delivered (the task cannot hold them back)"
        )
    if found.incomplete:
        reasons.append("the DLQ could not be read to the end")
    if reasons:
        _say(f"moving message by message, not with SQS's move task: {'; '.join(reasons)}")
        return False
    if found.stale:
        _say(_stale_warning(found.stale, key_ttl))
    if found.possibly_delivered:
        _say(_possibly_delivered_warning(found.possibly_delivered, included=True))
    return True


def _redrive_loop(
    args: argparse.Namespace,
    target: Target,
    dlq_url: str,
    queue_url: str,
    selection: dlq.Selection,
) -> int:
    summary = dlq.RedriveSummary(dry_run=args.dry_run)
    total = dlq.approximate_count(target.sqs, dlq_url)
    first, longest = dlq.holds(args.max_hold)
    # Said before anything is received: the operator deciding whether to kill the run, or
    # when to run it again after it was killed, needs to know how long that hides messages.
    _say(
        f"messages this run receives are hidden from other readers until it ends; if it is "
        f"killed, they reappear on the DLQ within {first} s (at most {longest} s once a long "
        "scan's hold has grown; --max-hold)"
    )
    bar = _progress_bar(
        total=total or None,
        unit="msg",
        desc="dry run" if args.dry_run else "redrive",
        file=sys.stderr,
        disable=not _bar_wanted(args),
    )
    try:
        with _CtrlC() as ctrl_c:
            dlq.redrive(
                target.sqs,
                dlq_url,
                queue_url,
                selection,
                summary,
                progress=bar.update,
                stop=lambda: ctrl_c.pressed,
                max_hold=args.max_hold,
                notice=_say,
                key_ttl=_key_ttl(args),
                include_possibly_delivered=args.include_possibly_delivered,
            )
    except KeyboardInterrupt:
        # The scan has made what it held visible again; a batch that was sent but not yet
        # deleted is sent once more by the next run, and idempotency keeps it from being
        # delivered twice.
        summary.errors.append("interrupted: run the same command again to continue")
    except (BotoCoreError, ClientError) as error:  # receiving stopped working part way
        summary.errors.append(f"{error}; run the same command again to continue")
    finally:
        bar.close()
    if summary.stale:
        _say(_stale_warning(summary.stale, _key_ttl(args)))
    if summary.possibly_delivered:
        _say(
            _possibly_delivered_warning(
                summary.possibly_delivered, included=args.include_possibly_delivered
            )
        )
    print(render.summary(summary))
    for problem in summary.errors:
        print(f"relay: {problem}", file=sys.stderr)
    return OK if summary.ok and not summary.not_found else FAILED


def _key_ttl(args: argparse.Namespace) -> dlq.KeyTtl:
    return dlq.KeyTtl(args.key_ttl, args.include_stale)


def _stale_warning(count: int, key_ttl: dlq.KeyTtl) -> str:
    """One line: how many are older than the relay remembers, and what became of them."""
    older = f"{count} dead letters are older than --key-ttl ({key_ttl.seconds} s)"
    if key_ttl.include_stale:
        return f"{older}: redriving them (--include-stale); any already delivered goes out again"
    return (
        f"{older}: held back on the DLQ, as the relay may have delivered and forgotten them; "
        "--include-stale redrives them anyway"
    )


def _possibly_delivered_warning(count: int, *, included: bool) -> str:
    """One line: how many the provider may have already, and what became of them."""
    maybe = (
        f"{count} dead letters are possibly delivered (a send went unanswered, or no ErrorKind:"
        " moved by the queue's redrive policy)"
    )
    if included:
        return (
            f"{maybe}: redriving them (--include-possibly-delivered); any the provider had "
            "accepted goes out again"
        )
    return (
        f"{maybe}: held back on the DLQ, as a redrive would send them again; check with the "
        "provider, then --include-possibly-delivered redrives them"
    )


def _task_status(target: Target, dlq_url: str) -> int:
    try:
        entries = dlq.move_tasks(target.sqs, dlq.queue_arn(target.sqs, dlq_url))
    except dlq.MoveTaskUnsupported:
        print("relay: this endpoint has no SQS message move tasks", file=sys.stderr)
        return USAGE
    print(render.move_tasks(entries))
    return OK


class _CtrlC:
    """The first Ctrl-C asks the redrive to stop between batches; a second stops it at once.

    Stopping between batches means every message sent has been deleted too, so a rerun sends
    none twice. Only in the main thread (where Python runs signal handlers), and only in
    place of Python's own handler (one a caller installed, or SIG_IGN, is left alone).
    """

    def __init__(self) -> None:
        self.pressed = False
        self._installed = False

    def __enter__(self) -> _CtrlC:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pressed = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one raises
        sys.stderr.write("\nrelay: stopping after this batch (Ctrl-C again to stop now)\n")


def _say(text: str) -> None:
    """A note for the operator on stderr, above the progress bar if there is one."""
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:  # no bar either (_progress_bar): a plain line
        print(f"relay: {text}", file=sys.stderr)
        return
    tqdm.write(f"relay: {text}", file=sys.stderr)


def _progress_bar(**options: Any) -> Any:
    """A tqdm progress bar (the `ops` extra brings tqdm); without tqdm, none: the tool works the
    same, its notes and summary say what happened."""
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return _NoBar(options.get("total"))
    return tqdm(**options)


class _NoBar:
    """What the commands use of a tqdm bar, showing nothing."""

    def __init__(self, total: int | None = None) -> None:
        self.total, self.n = total, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _bar_wanted(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _confirmed(
    args: argparse.Namespace,
    selection: dlq.Selection,
    target: Target,
    dlq_url: str,
    queue_url: str,
) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print("relay: not a terminal; pass --yes to redrive without asking", file=sys.stderr)
        return False
    what = "every dead letter" if selection.everything else "the matching dead letters"
    count = dlq.approximate_count(target.sqs, dlq_url)
    print(
        f"Move {what} (of about {count}) from\n  {dlq_url}\nto\n  {queue_url}\n? [y/N] ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if sys.stdin.readline().strip().lower() in {"y", "yes"}:
        return True
    print("relay: nothing moved", file=sys.stderr)
    return False


# --- arguments --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="group", required=True, metavar="dlq")
    group = commands.add_parser("dlq", help="inspect and redrive dead letters", allow_abbrev=False)
    dlq_commands = group.add_subparsers(dest="command", required=True)
    common = _common()

    listing = dlq_commands.add_parser(
        "list", parents=[common], allow_abbrev=False, help="list dead letters (metadata only)"
    )
    _filters(listing)
    listing.add_argument("--limit", type=int, help="stop after this many")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(run=list_)

    showing = dlq_commands.add_parser(
        "show",
        parents=[common],
        allow_abbrev=False,
        help="one dead letter, body included (numbers masked, text hidden)",
    )
    showing.add_argument("message_id", metavar="MESSAGE_ID")
    showing.add_argument(
        "--unmasked",
        action="store_true",
        help="print the attributes and body as stored: phone numbers and message text included",
    )
    showing.set_defaults(run=show)

    redriving = dlq_commands.add_parser(
        "redrive",
        parents=[common],
        allow_abbrev=False,
        help="move dead letters back to the delivery queue",
        description=_redrive_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    redriving.add_argument("--all", action="store_true", help="every dead letter")
    _filters(redriving)
    redriving.add_argument(
        "--id",
        dest="ids",
        nargs="+",
        action="extend",
        metavar="MESSAGE_ID",
        help="these messages (repeatable)",
    )
    redriving.add_argument("--dry-run", action="store_true", help="count, move nothing")
    redriving.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    redriving.add_argument("--quiet", action="store_true", help="no progress bar")
    redriving.add_argument(
        "--no-move-task",
        action="store_true",
        help="with --all, move message by message instead of with SQS's move task (keeps "
        "re-parked messages from going round again; drops the Error* attributes)",
    )
    redriving.add_argument(
        "--key-ttl",
        type=_positive,
        default=dlq.KEY_TTL_SECONDS,
        metavar="SECONDS",
        help=f"the stack's IdempotencyTtlSeconds (default {dlq.KEY_TTL_SECONDS}): older dead "
        "letters are held back",
    )
    redriving.add_argument(
        "--include-stale",
        action="store_true",
        help="redrive dead letters older than --key-ttl too (each may be delivered twice)",
    )
    redriving.add_argument(
        "--include-possibly-delivered",
        action="store_true",
        help="redrive dead letters marked PossiblyDelivered too (any the provider had "
        "accepted is delivered twice)",
    )
    redriving.add_argument(
        "--status-of-task",
        action="store_true",
        help="show the DLQ's recent SQS move tasks and exit",
    )
    redriving.set_defaults(run=redrive)
    return parser


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("queues (flags, then --stack, then the environment)")
    where.add_argument("--stack", help="read the queue URLs from this CloudFormation stack")
    where.add_argument("--dlq-url", help=f"the dead-letter queue (env {DLQ_ENV})")
    where.add_argument("--queue-url", help=f"the delivery queue (env {QUEUE_ENV})")
    where.add_argument("--region", help="AWS region (default: the AWS config's)")
    where.add_argument(
        "--endpoint-url",
        help="an AWS stand-in such as make run's moto_server (or AWS_ENDPOINT_URL)",
    )
    common.add_argument(
        "--max-hold",
        type=_seconds,
        metavar="SECONDS",
        help=f"the longest a scan hides a message it received (default {dlq.MAX_HOLD_SECONDS}): "
        "how long a killed run can leave messages invisible to the next one",
    )
    return common


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text}") from None
    if not 1 <= value <= dlq.SQS_MAX_HOLD_SECONDS:
        raise argparse.ArgumentTypeError(f"between 1 and {dlq.SQS_MAX_HOLD_SECONDS} seconds")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1 second")
    return value


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=dlq.KINDS, help="only this ErrorKind")
    parser.add_argument("--status", type=int, help="only this ErrorStatus (provider HTTP status)")
