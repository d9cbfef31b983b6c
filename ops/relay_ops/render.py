"""What the tool prints: tables for people, JSON for scripts."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from relay.phone import mask

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mypy_boto3_sqs.type_defs import ListMessageMoveTasksResultEntryTypeDef

    from relay_ops.dlq import DeadLetter, MoveProgress, MoveTask, RedriveSummary

ERROR_WIDTH = 80
# E.164 numbers, or long bare digit runs: a provider's error text may quote the recipient.
_PHONE = re.compile(r"\+[1-9]\d{6,14}\b|\b\d{10,15}\b")


# The canonical message's number fields, masked as the relay's logs mask them (relay.phone).
_NUMBER_FIELDS = frozenset({"to", "from"})
_TEXT_FIELD = "text"
UNMASKED_HINT = "--unmasked prints the body as stored"


def mask_phone_numbers(text: str) -> str:
    """``text`` with anything that looks like a phone number reduced to its last two digits."""
    return _PHONE.sub(lambda found: "*" * (len(found.group()) - 2) + found.group()[-2:], text)


def age(sent_at: datetime | None, now: datetime) -> str:
    """A short age: ``45s``, ``12m``, ``3h``, ``2d``."""
    if sent_at is None:
        return "-"
    seconds = max(0, int((now - sent_at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _error(letter: DeadLetter) -> str:
    return mask_phone_numbers(letter.attribute("ErrorMessage") or "")


def listing(letters: Sequence[DeadLetter], now: datetime) -> str:
    """A table of the dead letters' metadata; never their bodies."""
    headings = ("MESSAGE ID", "KIND", "STATUS", "DELIVERED?", "AGE", "RELAY ID", "ERROR")
    rows = [
        (
            letter.message_id,
            letter.kind or "-",
            str(letter.status) if letter.status is not None else "-",
            "maybe" if letter.possibly_delivered else "-",
            age(letter.sent_at, now),
            letter.attribute("RelayId") or "-",
            _error(letter)[:ERROR_WIDTH].replace("\n", " "),
        )
        for letter in letters
    ]
    table = [headings, *rows]
    # The last column (the error) is left ragged: padding it would only add trailing blanks.
    widths = [max(len(row[i]) for row in table) for i in range(len(headings) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in table
    )


def listing_json(letters: Sequence[DeadLetter], now: datetime) -> str:
    """The same metadata as JSON (one object per dead letter), for scripts."""
    return json.dumps([_metadata(letter, now) for letter in letters], indent=2)


def _metadata(letter: DeadLetter, now: datetime) -> dict[str, Any]:
    sent_at = letter.sent_at
    return {
        "message_id": letter.message_id,
        "kind": letter.kind,
        "status": letter.status,
        "possibly_delivered": letter.possibly_delivered,
        "error": _error(letter),  # whole: scripts may need all of it (the table cuts it)
        "relay_id": letter.attribute("RelayId"),
        "dead_lettered_at": sent_at.isoformat() if sent_at else None,
        "age_seconds": int((now - sent_at).total_seconds()) if sent_at else None,
    }


def detail(letter: DeadLetter, now: datetime, *, unmasked: bool = False) -> str:
    """Everything about one dead letter (what ``show`` is asked for).

    Masked unless ``unmasked``: phone numbers in the attributes and the body are shortened and
    the message text is left out, as in the relay's logs; the operator asks for the rest.
    """
    sent_at = letter.sent_at
    lines = [
        f"MessageId: {letter.message_id}",
        f"DeadLettered: {sent_at.isoformat() if sent_at else '-'} ({age(sent_at, now)} ago)",
        f"ReceiveCount: {letter.system.get('ApproximateReceiveCount', '-')}",
    ]
    if letter.possibly_delivered:
        lines.append(
            "PossiblyDelivered: yes: a send went unanswered (or, with no ErrorKind, an invocation "
            "ended without an outcome), the provider may have it; redrive "
            "holds it back unless --include-possibly-delivered"
        )
    lines.append("Attributes:")
    for name in sorted(letter.attributes):
        value = letter.attributes[name]
        shown = value.get("StringValue", value.get("BinaryValue", b"").hex())
        # RelayId verbatim: it is what the delivery function's logs are searched by.
        if not unmasked and name != "RelayId":
            shown = mask_phone_numbers(shown)
        lines.append(f"  {name} ({value['DataType']}): {shown}")
    if unmasked:
        lines += ["Body:", letter.body]
    else:
        lines += [f"Body (numbers masked, text hidden; {UNMASKED_HINT}):", masked_body(letter.body)]
    return "\n".join(lines)


def masked_body(body: str) -> str:
    """A dead letter's body without the message text and with phone numbers masked.

    Parsed as JSON, so that the fields can be told apart; a body that is not JSON (or nested
    deeper than Python recurses: an invalid message can be) is left out whole.
    """
    try:
        # ASCII-escaped: a body may hold lone surrogates, which no terminal encoding can print.
        return json.dumps(_masked(json.loads(body), None))
    except (ValueError, RecursionError):
        return f"({len(body)} characters, not JSON that can be masked: hidden; {UNMASKED_HINT})"


def _masked(value: Any, field: str | None) -> Any:
    """``value``, found under ``field``, masked: the text hidden, numbers shortened."""
    if field == _TEXT_FIELD:
        size = len(value) if isinstance(value, str) else len(json.dumps(value))
        return f"[hidden: {size} characters]"
    if isinstance(value, dict):
        return {mask_phone_numbers(key): _masked(item, key) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, field) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if field in _NUMBER_FIELDS:
        return mask(value)  # as the relay's logs show the recipient and sender
    if isinstance(value, str):
        return mask_phone_numbers(value)
    if isinstance(value, int):  # a number written without quotes, digits and all
        shown = mask_phone_numbers(str(value))
        return value if shown == str(value) else shown
    return value


def summary(done: RedriveSummary) -> str:
    """The redrive's outcome in one line, and what to do about the rest."""
    moved = "would move" if done.dry_run else "moved"
    lines = [
        f"{moved} {done.moved}, skipped {done.skipped} (filtered out, made visible again), "
        f"failed {done.failed}"
    ]
    if done.stale and not done.include_stale:
        lines.append(
            f"held back: {done.stale} older than --key-ttl (left on the DLQ; "
            "--include-stale redrives them)"
        )
    if done.possibly_delivered and not done.include_possibly_delivered:
        lines.append(
            f"held back: {done.possibly_delivered} possibly delivered (the provider may have "
            "them: left on the DLQ; check with the provider, then --include-possibly-delivered "
            "redrives them)"
        )
    if done.unkeyable:
        lines.append(
            f"held back: {done.unkeyable} with no key and SQS's ten attributes already, so no "
            "room for the RelayId that keeps a delivered one from going out again (left on the "
            "DLQ; remove an attribute and redrive it by hand)"
        )
    if done.not_deleted:
        lines.append(
            f"sent but still on the DLQ: {done.not_deleted} (run again to finish; the relay's "
            "idempotency keeps them from being delivered twice)"
        )
    if done.parked_again:
        lines.append(
            f"dead-lettered again while redriving: {done.parked_again} (still failing: see "
            "relay dlq list; left on the DLQ)"
        )
    if done.not_found:
        lines.append(f"not found on the DLQ: {', '.join(done.not_found)}")
    if done.stopped:
        lines.append(
            "stopped on Ctrl-C between batches: every message sent was also removed from the "
            "DLQ; run the same command again to continue"
        )
    if done.incomplete:
        lines.append("the scan stopped short (see above): run the same command again")
    if done.released and not done.ok:
        lines.append(f"received but not moved, visible on the DLQ again: {done.released}")
    if done.dry_run:
        lines.append("dry run: nothing was sent or deleted")
    return "\n".join(lines)


def move_task(task: MoveTask) -> str:
    """Which StartMessageMoveTask the tool follows, and how to stop it."""
    joined = "following the SQS message move task already running"
    return "\n".join(
        [
            joined if task.joined else "started an SQS message move task",
            f"  task handle  {task.handle}",
            f"  from         {task.source_arn}",
            f"  to           {task.destination_arn}",
            "Ctrl-C stops following it, not the task (the same command follows it again); "
            "to stop the task:",
            f"  aws sqs cancel-message-move-task --task-handle {task.handle}",
        ]
    )


def move_result(progress: MoveProgress, left: int | None) -> str:
    """How a move task ended; ``left``: the DLQ's approximate count afterwards, if asked."""
    of = f" of about {progress.to_move}" if progress.to_move is not None else ""
    lines = [f"move task {progress.status}: moved {progress.moved}{of}"]
    if progress.failure:
        lines.append(f"failure: {progress.failure}")
    if left:
        lines.append(
            f"still on the DLQ: about {left} (dead-lettered again while the task ran, or new "
            "since): see relay dlq list"
        )
    return "\n".join(lines)


def move_tasks(entries: Sequence[ListMessageMoveTasksResultEntryTypeDef]) -> str:
    """The DLQ's recent move tasks, newest first."""
    if not entries:
        return "no message move tasks for this queue"
    lines = []
    for entry in entries:
        started = entry.get("StartedTimestamp")
        when = datetime.fromtimestamp(started / 1000, UTC).isoformat() if started else "-"
        moved = entry.get("ApproximateNumberOfMessagesMoved", 0)
        total = entry.get("ApproximateNumberOfMessagesToMove", "?")
        line = f"{entry.get('Status', '?'):<10} started {when}  moved {moved} of {total}"
        if "TaskHandle" in entry:
            line += f"  handle {entry['TaskHandle']}"
        if "FailureReason" in entry:
            line += f"  failure: {entry['FailureReason']}"
        lines.append(line)
    return "\n".join(lines)
