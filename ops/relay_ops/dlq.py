"""Dead letters: read them without consuming them, and move them back to the delivery queue.

Reading holds each received message invisible (``HOLD_SECONDS``) until the scan ends, then makes
it visible again at once: the hold is what lets a scan see every message exactly once and stop,
and it is also the safety net, since a crashed scan's messages come back by themselves. A scan
that outlasts its hold doubles it (up to SQS's 12 hours) each time a held message comes round.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from types import TracebackType

    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ListMessageMoveTasksResultEntryTypeDef,
        MessageAttributeValueOutputTypeDef,
        MessageAttributeValueTypeDef,
        MessageTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

KINDS = ("invalid", "permanent", "exhausted")
HOLD_SECONDS = 30
MAX_HOLD_SECONDS = 12 * 60 * 60  # SQS's longest visibility timeout
BATCH = 10  # SQS's most per receive and per batch call
MAX_BATCH_BYTES = 256 * 1024  # SQS's batch payload limit (the older, smaller one: safe anywhere)
ERROR_PREFIX = "Error"  # ErrorKind, ErrorStatus, ErrorMessage: this dead-lettering's reason
# What an endpoint answers for an action it does not have (moto_server, older emulators).
UNSUPPORTED = {
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
    "InvalidAction",
    "NotImplemented",
    "UnknownOperationException",
}


@dataclass(frozen=True)
class DeadLetter:
    """One received dead letter: body, message attributes and SQS's system attributes."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: Mapping[str, MessageAttributeValueOutputTypeDef]
    system: Mapping[str, str]

    @classmethod
    def from_sqs(cls, message: MessageTypeDef) -> DeadLetter:
        """Adapt a ReceiveMessage entry."""
        return cls(
            message_id=message.get("MessageId", ""),
            receipt_handle=message.get("ReceiptHandle", ""),
            body=message.get("Body", ""),
            attributes=message.get("MessageAttributes", {}),
            system={str(name): value for name, value in message.get("Attributes", {}).items()},
        )

    def attribute(self, name: str) -> str | None:
        """A message attribute's string value, if it has one."""
        value = self.attributes.get(name)
        return value.get("StringValue") if value is not None else None

    @property
    def kind(self) -> str | None:
        """ErrorKind; None for a message the queue's redrive policy parked without a reason."""
        return self.attribute("ErrorKind")

    @property
    def status(self) -> int | None:
        """ErrorStatus, the provider's HTTP status, when there was one."""
        value = self.attribute("ErrorStatus")
        try:
            return int(float(value)) if value else None
        except ValueError:
            return None

    @property
    def sent_at(self) -> datetime | None:
        """When it was dead-lettered (the DLQ message's SentTimestamp)."""
        millis = self.system.get("SentTimestamp")
        return datetime.fromtimestamp(int(millis) / 1000, UTC) if millis else None

    def redrive_attributes(self) -> dict[str, MessageAttributeValueTypeDef]:
        """The attributes to send it back with: all but the Error* reason.

        RelayId and IdempotencyKey stay, so the relay recognises a message it already delivered.
        """
        kept: dict[str, MessageAttributeValueTypeDef] = {}
        for name, value in self.attributes.items():
            if name.startswith(ERROR_PREFIX):
                continue
            # Only the scalar values: SQS reserves the list fields and refuses them on send.
            copy: MessageAttributeValueTypeDef = {"DataType": value["DataType"]}
            if "StringValue" in value:
                copy["StringValue"] = value["StringValue"]
            if "BinaryValue" in value:
                copy["BinaryValue"] = value["BinaryValue"]
            kept[name] = copy
        return kept


@dataclass(frozen=True)
class Selection:
    """Which dead letters to act on; no criteria at all means every one."""

    kind: str | None = None
    status: int | None = None
    ids: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        """True when nothing is filtered out."""
        return self.kind is None and self.status is None and not self.ids

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` meets every given criterion."""
        return (
            (self.kind is None or letter.kind == self.kind)
            and (self.status is None or letter.status == self.status)
            and (not self.ids or letter.message_id in self.ids)
        )


class Scan:
    """Receives each visible dead letter once, holding it until the scan is closed.

    Use as a context manager: leaving it makes every held message visible again, also after an
    error or Ctrl-C (and if even that fails, the hold runs out by itself).
    """

    def __init__(self, sqs: SQSClient, url: str, hold_seconds: int | None = None) -> None:
        self._sqs = sqs
        self._url = url
        self._hold = hold_seconds or HOLD_SECONDS
        self._seen: set[str] = set()
        self._held: dict[str, str] = {}  # message id -> latest receipt handle

    def __enter__(self) -> Scan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __iter__(self) -> Iterator[list[DeadLetter]]:
        """Batches of dead letters not seen before in this scan, until none are left visible."""
        while received := self._receive():
            for letter in received:
                self._held[letter.message_id] = letter.receipt_handle
            fresh = [letter for letter in received if letter.message_id not in self._seen]
            if len(fresh) < len(received):
                # A hold ran out before the scan ended: the queue is longer than one hold can
                # cover. Stopping here would skip the messages not yet seen, so carry on; the
                # receive has just held the seen ones again, and a longer hold from now on
                # means they stop coming round and the scan ends.
                self._hold = min(self._hold * 2, MAX_HOLD_SECONDS)
            if fresh:
                self._seen.update(letter.message_id for letter in fresh)
                yield fresh

    def forget(self, letters: Sequence[DeadLetter]) -> None:
        """Stop holding ``letters`` (deleted: there is nothing to make visible)."""
        for letter in letters:
            self._held.pop(letter.message_id, None)

    def release(self) -> None:
        """Make every held message visible again now."""
        handles = list(self._held.values())
        self._held.clear()
        for start in range(0, len(handles), BATCH):
            entries = handles[start : start + BATCH]
            # If this fails they come back when the hold runs out: late, never lost.
            with contextlib.suppress(BotoCoreError, ClientError):
                self._sqs.change_message_visibility_batch(
                    QueueUrl=self._url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                        for i, handle in enumerate(entries)
                    ],
                )

    def _receive(self) -> list[DeadLetter]:
        messages = self._receive_once(wait=0)
        # A short poll samples some of SQS's servers and may come back empty while messages
        # wait; ask the count and, if there may be more, long-poll once to be sure.
        if not messages and approximate_count(self._sqs, self._url) > 0:
            messages = self._receive_once(wait=1)
        return [DeadLetter.from_sqs(message) for message in messages]

    def _receive_once(self, wait: int) -> list[MessageTypeDef]:
        return self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=BATCH,
            VisibilityTimeout=self._hold,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        ).get("Messages", [])


def approximate_count(sqs: SQSClient, url: str) -> int:
    """ApproximateNumberOfMessages: the visible messages, as SQS estimates them."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", "0"))


def peek(
    sqs: SQSClient, dlq_url: str, selection: Selection, limit: int | None = None
) -> list[DeadLetter]:
    """The dead letters ``selection`` matches (at most ``limit``), left on the queue."""
    found: list[DeadLetter] = []
    with Scan(sqs, dlq_url) as scan:
        for batch in scan:
            found += [letter for letter in batch if selection.matches(letter)]
            if limit is not None and len(found) >= limit:
                return found[:limit]
    return found


def find(sqs: SQSClient, dlq_url: str, message_id: str) -> DeadLetter | None:
    """The dead letter with this message id, left on the queue; None if it is not there."""
    found = peek(sqs, dlq_url, Selection(ids=frozenset({message_id})), limit=1)
    return found[0] if found else None


# --- redrive ----------------------------------------------------------------------------------


@dataclass
class RedriveSummary:
    """What a redrive did so far (kept up to date, so an interrupted run can still report)."""

    dry_run: bool = False
    moved: int = 0  # sent to the delivery queue and deleted from the DLQ (dry run: would be)
    skipped: int = 0  # filtered out, made visible again
    failed: int = 0  # not sent: still on the DLQ
    not_deleted: int = 0  # sent, but still on the DLQ: a rerun sends them again
    parked_again: int = 0  # sent by this run and dead-lettered again meanwhile: left alone
    not_found: list[str] = field(default_factory=list)  # --id values no scan came across
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every selected message is on the delivery queue and off the DLQ."""
        return not (self.failed or self.not_deleted or self.errors)


class _Stop(Exception):
    """A whole batch call failed: the next would too, so end the run."""


def redrive(
    sqs: SQSClient,
    dlq_url: str,
    queue_url: str,
    selection: Selection,
    summary: RedriveSummary,
    progress: Callable[[int], object] = lambda _: None,
) -> RedriveSummary:
    """Move the selected dead letters to the delivery queue: send each first, then delete it.

    A message is deleted from the DLQ only once its send succeeded, so none is lost; one sent
    but not deleted (a crash in between, a failed delete) stays on the DLQ and a rerun sends it
    again, which the relay's idempotency makes harmless. ``summary`` is updated as it goes.
    """
    wanted = set(selection.ids)
    # The relay ids this run sent: the delivery function may park a message again (still
    # invalid, still refused) while the run goes on, and sending that copy back would loop.
    # A re-parked copy carries the RelayId it was sent with, or, if it had none, the message id
    # the delivery queue gave it.
    sent: set[str] = set()
    with Scan(sqs, dlq_url) as scan:
        try:
            for batch in scan:
                again = [letter for letter in batch if letter.attribute("RelayId") in sent]
                summary.parked_again += len(again)
                rest = [letter for letter in batch if letter not in again]
                chosen = [letter for letter in rest if selection.matches(letter)]
                summary.skipped += len(rest) - len(chosen)
                wanted.difference_update(letter.message_id for letter in chosen)
                if summary.dry_run:
                    summary.moved += len(chosen)
                else:
                    for chunk in _chunks(chosen):
                        scan.forget(_move(sqs, dlq_url, queue_url, chunk, summary, sent))
                progress(len(batch))
                if selection.ids and not wanted:
                    break  # every id asked for is handled: no need to read the rest
        except _Stop as stop:
            summary.errors.append(str(stop))
    summary.not_found = sorted(wanted)
    return summary


def _move(
    sqs: SQSClient,
    dlq_url: str,
    queue_url: str,
    letters: Sequence[DeadLetter],
    summary: RedriveSummary,
    relay_ids: set[str],
) -> list[DeadLetter]:
    """Send ``letters``, then delete those sent; the ones deleted.

    Adds the relay id of each message sent to ``relay_ids``.
    """
    entries: list[SendMessageBatchRequestEntryTypeDef] = [
        {"Id": str(i), "MessageBody": letter.body, "MessageAttributes": letter.redrive_attributes()}
        for i, letter in enumerate(letters)
    ]
    try:
        answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except (BotoCoreError, ClientError) as error:
        summary.failed += len(letters)
        raise _Stop(f"could not send to the delivery queue: {error}") from None
    succeeded = answer.get("Successful", [])
    for entry in succeeded:
        letter = letters[int(entry["Id"])]
        relay_ids.add(letter.attribute("RelayId") or entry["MessageId"])
    summary.failed += len(letters) - len(succeeded)
    for failure in answer.get("Failed", []):
        letter = letters[int(failure["Id"])]
        summary.errors.append(
            f"{letter.message_id} not sent: {failure['Code']} {failure.get('Message')}"
        )
    sent = [letters[int(entry["Id"])] for entry in succeeded]
    if not sent:
        return []
    # Only now, with a copy on the delivery queue, may the dead letter go.
    try:
        answer_delete = sqs.delete_message_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": letter.receipt_handle}
                for i, letter in enumerate(sent)
            ],
        )
    except (BotoCoreError, ClientError) as error:
        summary.not_deleted += len(sent)
        raise _Stop(f"sent, but not removed from the DLQ: {error}") from None
    deleted_ids = {entry["Id"] for entry in answer_delete.get("Successful", [])}
    deleted = [letter for i, letter in enumerate(sent) if str(i) in deleted_ids]
    summary.moved += len(deleted)
    summary.not_deleted += len(sent) - len(deleted)
    return deleted


def _chunks(letters: Sequence[DeadLetter]) -> Iterator[list[DeadLetter]]:
    """At most BATCH messages and MAX_BATCH_BYTES per send (always at least one message)."""
    chunk: list[DeadLetter] = []
    size = 0
    for letter in letters:
        letter_size = _size(letter)
        if chunk and (len(chunk) == BATCH or size + letter_size > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(letter)
        size += letter_size
    if chunk:
        yield chunk


def _size(letter: DeadLetter) -> int:
    """SQS's count: the body plus each attribute's name, data type and value."""
    size = len(letter.body.encode())
    for name, value in letter.redrive_attributes().items():
        size += len(name.encode()) + len(value["DataType"].encode())
        size += len(value.get("StringValue", "").encode())
        binary = value.get("BinaryValue", b"")
        size += len(binary) if isinstance(binary, bytes | str) else 0
    return size


# --- SQS's own move task ----------------------------------------------------------------------


class MoveTaskUnsupported(Exception):
    """The endpoint has no StartMessageMoveTask (moto, other stand-ins)."""


@dataclass(frozen=True)
class MoveTask:
    """A started StartMessageMoveTask."""

    handle: str
    source_arn: str
    destination_arn: str


def queue_arn(sqs: SQSClient, url: str) -> str:
    """A queue's ARN, from its URL."""
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]


def start_move_task(sqs: SQSClient, dlq_url: str, queue_url: str) -> MoveTask:
    """Have SQS move every dead letter to the delivery queue (server-side, asynchronous)."""
    source, destination = queue_arn(sqs, dlq_url), queue_arn(sqs, queue_url)
    try:
        started = sqs.start_message_move_task(SourceArn=source, DestinationArn=destination)
    except NotImplementedError as error:  # moto in-process raises rather than answering
        raise MoveTaskUnsupported(str(error)) from None
    except ClientError as error:
        if _unsupported(error):
            raise MoveTaskUnsupported(str(error)) from None
        raise
    return MoveTask(started["TaskHandle"], source, destination)


def move_tasks(sqs: SQSClient, dlq_url: str) -> list[ListMessageMoveTasksResultEntryTypeDef]:
    """The DLQ's most recent move tasks (SQS keeps up to ten)."""
    source = queue_arn(sqs, dlq_url)
    try:
        return sqs.list_message_move_tasks(SourceArn=source, MaxResults=10)["Results"]
    except NotImplementedError as error:
        raise MoveTaskUnsupported(str(error)) from None
    except ClientError as error:
        if _unsupported(error):
            raise MoveTaskUnsupported(str(error)) from None
        raise


def _unsupported(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    # botocore names the error after the HTTP status when the answer is not in SQS's protocol
    # at all (moto_server's HTML error page): not an SQS that knows the action.
    return code in UNSUPPORTED or status == 501 or code == str(status)
