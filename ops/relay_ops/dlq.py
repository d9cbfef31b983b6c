"""Dead letters: read them without consuming them, and move them back to the delivery queue.

Reading holds each received message invisible (``HOLD_SECONDS``) until the scan ends, then makes
it visible again at once: the hold is what lets a scan see every message exactly once and stop,
and it is also the safety net, since a crashed scan's messages come back by themselves. A scan
that outlasts its hold doubles it each time a held message comes round, but only up to
``MAX_HOLD_SECONDS`` (or the operator's ``--max-hold``): a killed run hides messages for at most
that long, which has to be short enough to wait out before running again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
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
# The longest a scan holds a message by default: what a killed run can leave hidden, so a rerun
# does not see those messages until it has passed. Minutes, not SQS's 12 hours.
MAX_HOLD_SECONDS = 5 * 60
SQS_MAX_HOLD_SECONDS = 12 * 60 * 60  # SQS's longest visibility timeout
# How long the relay remembers a delivery: the template's IdempotencyTtlSeconds default (the
# DLQ's retention). An older dead letter may have been delivered and forgotten.
KEY_TTL_SECONDS = 14 * 24 * 60 * 60
POLL_SECONDS = 5.0  # between ListMessageMoveTasks calls while following a move task
BATCH = 10  # SQS's most per receive and per batch call
MAX_BATCH_BYTES = 256 * 1024  # SQS's batch payload limit (the older, smaller one: safe anywhere)
MAX_ATTRIBUTES = 10  # SQS's limit per message
CLOCK_SKEW_SECONDS = 30  # how far this machine's clock may run ahead of SQS's
ERROR_PREFIX = "Error"  # ErrorKind, ErrorStatus, ErrorMessage: this dead-lettering's reason
# "true" when a send of the message went unanswered: the provider may have it, and the relay
# has no record of a delivery to recognise it by, so a redrive would send it again. A dead
# letter with no ErrorKind at all counts the same (``DeadLetter.possibly_delivered``).
POSSIBLY_DELIVERED = "PossiblyDelivered"
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
    def possibly_delivered(self) -> bool:
        """The provider may have it, and a redrive may send it again: PossiblyDelivered (a send
        went unanswered), or no ErrorKind at all.

        A dead letter without a reason was moved by the queue's redrive policy, not parked by
        the relay: an invocation ended without an outcome (a crash, a timeout; deployments
        before the policy allowed one receive more than the function), possibly mid-send.
        """
        if not (self.kind or "").strip():
            return True
        return (self.attribute(POSSIBLY_DELIVERED) or "").strip().lower() == "true"

    @property
    def sent_at(self) -> datetime | None:
        """When it was dead-lettered (the DLQ message's SentTimestamp).

        For a message the queue's redrive policy moved, SQS keeps the original enqueue time:
        then it is when the message was first sent, before any delivery of it.
        """
        millis = self.system.get("SentTimestamp")
        return datetime.fromtimestamp(int(millis) / 1000, UTC) if millis else None

    def age(self, now: datetime) -> float | None:
        """Seconds since ``sent_at``; None if SQS did not say."""
        sent_at = self.sent_at
        return (now - sent_at).total_seconds() if sent_at is not None else None

    @property
    def keyed(self) -> bool:
        """Whether the relay would recognise it under a new message id (a redrive, a move
        task): it has a RelayId (the delivery function writes one on all it parks), an
        IdempotencyKey attribute, or an ``idempotency_key`` in its body."""
        return bool(
            (self.attribute("RelayId") or "").strip()
            or (self.attribute("IdempotencyKey") or "").strip()
            or self._body_key
        )

    @cached_property  # keyed is asked by the survey, the redrive and its attributes
    def _body_key(self) -> bool:
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return False
        return isinstance(parsed, dict) and isinstance(parsed.get("idempotency_key"), str)

    @property
    def relay_id(self) -> str:
        """The RelayId it is redriven with: its own, else its message id.

        A dead letter without one was moved by the queue's redrive policy, which keeps the
        message id; that id is what the delivery function keyed it by (unless the body or an
        IdempotencyKey gave a key), so sent back under it, it is recognised if delivered.
        """
        return (self.attribute("RelayId") or "").strip() or self.message_id

    def _room(self) -> bool:
        """Whether a RelayId fits beside the attributes it is redriven with (SQS allows ten)."""
        kept = [name for name in self.attributes if not name.startswith(ERROR_PREFIX)]
        return len(kept) < MAX_ATTRIBUTES

    @property
    def unkeyable(self) -> bool:
        """Not keyed, and no room for a RelayId: it holds SQS's ten attributes already."""
        return not self.keyed and not self._room()

    def redrive_attributes(self) -> dict[str, MessageAttributeValueTypeDef]:
        """The attributes to send it back with: all but the Error* reason, and a RelayId.

        RelayId and IdempotencyKey stay, so the relay recognises a message it already delivered;
        one without a RelayId gets ``relay_id`` where it fits (a redrive gives it a new message
        id): the relay's key for one with no other, and what the run's loop guard knows it by.
        PossiblyDelivered stays too (as SQS's move task keeps it): parked again, it says so still.
        A letter possibly delivered for having no reason gets it where it fits, after RelayId.
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
        if "RelayId" not in kept and self._room():
            kept["RelayId"] = {"DataType": "String", "StringValue": self.relay_id}
        if self.possibly_delivered and (POSSIBLY_DELIVERED in kept or len(kept) < MAX_ATTRIBUTES):
            kept[POSSIBLY_DELIVERED] = {"DataType": "String", "StringValue": "true"}
        return kept


@dataclass(frozen=True)
class KeyTtl:
    """How long the relay remembers a delivery, and whether to redrive older dead letters."""

    seconds: int = KEY_TTL_SECONDS
    include_stale: bool = False  # redrive them anyway: each may be delivered a second time

    def stale(self, letter: DeadLetter, now: datetime) -> bool:
        """Older than the relay remembers: if it was delivered, a redrive sends it again."""
        age = letter.age(now)
        return age is not None and age > self.seconds


def utc_now() -> datetime:
    """The tool's clock, for dead letters' ages."""
    return datetime.now(UTC)


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
    error or Ctrl-C (and if even that fails, the hold runs out by itself). ``notice`` is told,
    in words for the operator, when the hold grows, when a scan has to stop short, and about
    messages that could not be made visible again.
    """

    def __init__(
        self,
        sqs: SQSClient,
        url: str,
        max_hold: int | None = None,
        notice: Callable[[str], object] = lambda _: None,
    ) -> None:
        self._sqs = sqs
        self._url = url
        self._hold, self._max_hold = holds(max_hold)
        self._notice = notice
        self._seen: set[str] = set()
        self._held: dict[str, str] = {}  # message id -> latest receipt handle
        self._repeats = 0  # messages received again at the longest hold since the last new one
        self._receiving = False  # between asking SQS for messages and keeping their handles
        self.incomplete = False  # stopped with messages perhaps not yet seen
        self.released = 0  # made visible again on closing

    def __enter__(self) -> Scan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._receiving:
            # Stopped between SQS's answer and the handles being kept: what that receive took
            # cannot be released, and reappears when its hold runs out.
            self._notice(
                f"stopped during a receive: up to {BATCH} messages it took stay hidden on the "
                f"DLQ for up to {self._hold} s"
            )
        self.release()

    def __iter__(self) -> Iterator[list[DeadLetter]]:
        """Batches of dead letters not seen before in this scan, until none are left visible."""
        while received := self._receive():
            fresh = [letter for letter in received if letter.message_id not in self._seen]
            if len(fresh) < len(received) and not self._outlasted(len(received) - len(fresh)):
                return
            if fresh:
                self._repeats = 0
                self._seen.update(letter.message_id for letter in fresh)
                yield fresh

    def _outlasted(self, repeats: int) -> bool:
        """A hold ran out before the scan ended; False when the scan should stop now.

        The queue is longer than one hold can cover. Stopping at once would skip the messages
        not yet seen, so carry on; the receive has just held the seen ones again, and a longer
        hold from now on means they stop coming round and the scan ends. At the longest hold,
        a queue can take longer to read than the hold lasts, and then something is always
        visible: stop once as many repeats as messages seen have come without a new one.
        """
        if self._hold < self._max_hold:
            self._hold = min(self._hold * 2, self._max_hold)
            self._notice(
                f"the scan outlasts its hold: holding messages {self._hold} s now (at most "
                f"{self._max_hold} s); if this run is killed, they reappear within that"
            )
            return True
        self._repeats += repeats
        if self._repeats <= len(self._seen):
            return True
        self.incomplete = True
        self._notice(
            f"stopped after {len(self._seen)} messages: the queue takes longer to read than the "
            f"longest hold ({self._max_hold} s), so some may not have been seen; run again, or "
            "raise --max-hold"
        )
        return False

    def forget(self, letters: Sequence[DeadLetter]) -> None:
        """Stop holding ``letters`` (deleted: there is nothing to make visible)."""
        for letter in letters:
            self._held.pop(letter.message_id, None)

    def release(self) -> None:
        """Make every held message visible again now; tell ``notice`` about any that stay hidden.

        Runs when the scan ends for any reason, KeyboardInterrupt included: what this run
        received but did not delete must be readable by the next run at once, not after a hold.
        """
        handles = list(self._held.values())
        self._held.clear()
        pending = [handles[start : start + BATCH] for start in range(0, len(handles), BATCH)]
        hidden = 0
        interrupt: KeyboardInterrupt | None = None
        while pending:
            try:
                hidden += self._release(pending[0])
            except KeyboardInterrupt as error:
                # Ctrl-C while releasing, most likely the second of a run being stopped: the
                # call may not have gone through, so make it again (visibility 0 twice is
                # harmless). A further one abandons the rest, and the notice says so.
                if interrupt is not None:
                    break
                interrupt = error
                continue
            pending.pop(0)
        hidden += sum(len(entries) for entries in pending)
        if hidden:
            self._notice(
                f"{hidden} messages could not be made visible again: they stay hidden on the DLQ "
                f"for up to {self._hold} s, and a run before then does not see them"
            )
        if interrupt is not None:
            raise interrupt

    def _release(self, handles: Sequence[str]) -> int:
        """Make these messages visible again; how many could not be."""
        try:
            answer = self._sqs.change_message_visibility_batch(
                QueueUrl=self._url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                    for i, handle in enumerate(handles)
                ],
            )
        except (BotoCoreError, ClientError):
            return len(handles)  # they come back when the hold runs out: late, not lost
        self.released += len(answer.get("Successful", []))
        return len(answer.get("Failed", []))

    def _receive(self) -> list[DeadLetter]:
        """Receive a batch and hold it: its receipt handles are kept for ``release``."""
        self._receiving = True
        messages = self._receive_once(wait=0)
        # A short poll samples some of SQS's servers and may come back empty while messages
        # wait; ask the count and, if there may be more, long-poll once to be sure.
        if not messages and approximate_count(self._sqs, self._url) > 0:
            messages = self._receive_once(wait=1)
        received = [DeadLetter.from_sqs(message) for message in messages]
        for letter in received:
            self._held[letter.message_id] = letter.receipt_handle
        self._receiving = False
        return received

    def _receive_once(self, wait: int) -> list[MessageTypeDef]:
        return self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=BATCH,
            VisibilityTimeout=self._hold,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
        ).get("Messages", [])


def holds(max_hold: int | None) -> tuple[int, int]:
    """A scan's first and longest hold, in seconds, for an operator's ``--max-hold``."""
    longest = max(1, min(max_hold or MAX_HOLD_SECONDS, SQS_MAX_HOLD_SECONDS))
    return min(HOLD_SECONDS, longest), longest


def approximate_count(sqs: SQSClient, url: str) -> int:
    """ApproximateNumberOfMessages: the visible messages, as SQS estimates them."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", "0"))


def peek(
    sqs: SQSClient,
    dlq_url: str,
    selection: Selection,
    limit: int | None = None,
    max_hold: int | None = None,
    notice: Callable[[str], object] = lambda _: None,
) -> list[DeadLetter]:
    """The dead letters ``selection`` matches (at most ``limit``), left on the queue."""
    found: list[DeadLetter] = []
    with Scan(sqs, dlq_url, max_hold, notice) as scan:
        for batch in scan:
            found += [letter for letter in batch if selection.matches(letter)]
            if limit is not None and len(found) >= limit:
                return found[:limit]
    return found


def find(
    sqs: SQSClient,
    dlq_url: str,
    message_id: str,
    max_hold: int | None = None,
    notice: Callable[[str], object] = lambda _: None,
) -> DeadLetter | None:
    """The dead letter with this message id, left on the queue; None if it is not there."""
    selection = Selection(ids=frozenset({message_id}))
    found = peek(sqs, dlq_url, selection, limit=1, max_hold=max_hold, notice=notice)
    return found[0] if found else None


@dataclass
class Survey:
    """What a scan of the whole DLQ found that SQS's move task would mishandle."""

    unkeyed: int = 0  # with no key: the task would give them new message ids
    stale: int = 0  # older than the key TTL: the task cannot hold them back
    # PossiblyDelivered, or no reason at all: the task cannot hold them back either.
    possibly_delivered: int = 0
    incomplete: bool = False  # the scan stopped short: the counts are a lower bound


def survey(
    sqs: SQSClient,
    dlq_url: str,
    key_ttl: KeyTtl,
    max_hold: int | None = None,
    notice: Callable[[str], object] = lambda _: None,
) -> Survey:
    """Count the dead letters without RelayId, those older than ``key_ttl``, and those
    possibly delivered."""
    found = Survey()
    now = utc_now()
    with Scan(sqs, dlq_url, max_hold, notice) as scan:
        for batch in scan:
            found.unkeyed += sum(not letter.keyed for letter in batch)
            found.stale += sum(key_ttl.stale(letter, now) for letter in batch)
            found.possibly_delivered += sum(letter.possibly_delivered for letter in batch)
    found.incomplete = scan.incomplete
    return found


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
    stopped: bool = False  # asked to stop (Ctrl-C) and did, between batches
    incomplete: bool = False  # the scan stopped short (the queue outlasted the longest hold)
    released: int = 0  # received, not moved, made visible again at the end
    stale: int = 0  # selected, but older than the key TTL: held back unless include_stale
    include_stale: bool = False
    unkeyable: int = 0  # selected, but no key and no room for a RelayId: always held back
    # Selected, not held back otherwise, but possibly delivered (PossiblyDelivered, or no
    # ErrorKind): held back unless included.
    possibly_delivered: int = 0
    include_possibly_delivered: bool = False

    @property
    def held_back(self) -> int:
        """Dead letters left on the DLQ: stale ones, possibly delivered ones (unless included),
        and those that cannot get a RelayId."""
        return (
            (0 if self.include_stale else self.stale)
            + (0 if self.include_possibly_delivered else self.possibly_delivered)
            + self.unkeyable
        )

    @property
    def ok(self) -> bool:
        """True when every selected message is on the delivery queue and off the DLQ."""
        return not (
            self.failed
            or self.not_deleted
            or self.errors
            or self.stopped
            or self.incomplete
            or self.held_back
        )


class _Stop(Exception):
    """A whole batch call failed: the next would too, so end the run."""


def redrive(
    sqs: SQSClient,
    dlq_url: str,
    queue_url: str,
    selection: Selection,
    summary: RedriveSummary,
    progress: Callable[[int], object] = lambda _: None,
    *,
    stop: Callable[[], bool] = lambda: False,
    max_hold: int | None = None,
    notice: Callable[[str], object] = lambda _: None,
    key_ttl: KeyTtl | None = None,
    include_possibly_delivered: bool = False,
) -> RedriveSummary:
    """Move the selected dead letters to the delivery queue: send each first, then delete it.

    A message is deleted from the DLQ only once its send succeeded, so none is lost; one sent
    but not deleted (a crash in between, a failed delete) stays on the DLQ and a rerun sends it
    again, which the relay's idempotency makes harmless. ``summary`` is updated as it goes.

    ``stop`` is asked between batches of ten: True ends the run there, where every message
    sent has also been deleted, so a rerun sends none of them twice. Whatever way the run
    ends (KeyboardInterrupt included), the messages it received and did not delete are made
    visible again before this returns or raises.

    Selected dead letters older than ``key_ttl`` are counted in ``summary.stale`` and left on
    the DLQ, unless it says to include them; so are the possibly delivered ones
    (``summary.possibly_delivered``), unless ``include_possibly_delivered``.
    """
    ttl = key_ttl or KeyTtl()
    summary.include_stale = ttl.include_stale
    summary.include_possibly_delivered = include_possibly_delivered
    wanted = set(selection.ids)
    # The relay ids this run sent: the delivery function may park a message again (still
    # invalid, still refused) while the run goes on, and sending that copy back would loop.
    # A re-parked copy carries the RelayId it was sent with (every message with room for one
    # is sent with one).
    # Only a copy parked after the run began: two copies of one message share a RelayId (a
    # webhook retry), and the one still waiting from before is redriven like any other.
    sent: set[str] = set()
    # SentTimestamp is SQS's clock, utc_now ours: a machine running up to this far ahead still
    # sees a copy parked during the run as parked again (a copy parked just before the run
    # may be left on the DLQ too, and reported: the safe side).
    started = utc_now() - timedelta(seconds=CLOCK_SKEW_SECONDS)
    scan = Scan(sqs, dlq_url, max_hold, notice)
    try:
        with scan:
            for batch in scan:
                again = [
                    letter
                    for letter in batch
                    if letter.relay_id in sent
                    and letter.sent_at is not None
                    and letter.sent_at >= started
                ]
                summary.parked_again += len(again)
                rest = [letter for letter in batch if letter not in again]
                chosen = [letter for letter in rest if selection.matches(letter)]
                summary.skipped += len(rest) - len(chosen)
                wanted.difference_update(letter.message_id for letter in chosen)
                now = utc_now()
                stale = [letter for letter in chosen if ttl.stale(letter, now)]
                summary.stale += len(stale)
                if not ttl.include_stale:
                    chosen = [letter for letter in chosen if letter not in stale]
                # The provider may have these, and nothing would recognise them: only the
                # operator, who can ask the provider, may send them again.
                maybe = [letter for letter in chosen if letter.possibly_delivered]
                summary.possibly_delivered += len(maybe)
                if not include_possibly_delivered:
                    chosen = [letter for letter in chosen if letter not in maybe]
                unkeyable = [letter for letter in chosen if letter.unkeyable]
                summary.unkeyable += len(unkeyable)
                chosen = [letter for letter in chosen if letter not in unkeyable]
                if summary.dry_run:
                    summary.moved += len(chosen)
                else:
                    for chunk in _chunks(chosen):
                        if stop():
                            break
                        scan.forget(_move(sqs, dlq_url, queue_url, chunk, summary, sent))
                progress(len(batch))
                if stop():
                    # The rest of this batch, if any, was not sent: it is released with the
                    # scan, and a rerun picks it up.
                    summary.stopped = True
                    break
                if selection.ids and not wanted:
                    break  # every id asked for is handled: no need to read the rest
    except _Stop as stopped:
        summary.errors.append(str(stopped))
    finally:
        summary.incomplete = scan.incomplete
        summary.released = scan.released
    summary.not_found = [] if summary.stopped or scan.incomplete else sorted(wanted)
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
        relay_ids.add(letters[int(entry["Id"])].relay_id)  # the RelayId it was sent with
        # Sent without one (no room), it is parked again under its new message id.
        relay_ids.add(entry["MessageId"])
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


class MoveTaskBusy(Exception):
    """Another move task, to another queue, is running on the DLQ (SQS allows one at a time)."""


class MoveTaskLost(Exception):
    """The task followed no longer shows in ListMessageMoveTasks."""


RUNNING = frozenset({"RUNNING", "CANCELLING"})  # SQS allows no second task on the queue
ENDED = frozenset({"COMPLETED", "CANCELLED", "FAILED"})
LOST_AFTER = 3  # polls in a row without the task before giving up on following it


@dataclass(frozen=True)
class MoveTask:
    """A StartMessageMoveTask this run started, or one already running that it joined."""

    handle: str
    source_arn: str
    destination_arn: str
    joined: bool = False  # found running (started by an earlier run or someone else)
    started_at: int | None = None  # StartedTimestamp, when known (a joined task's)
    # The StartedTimestamps of the tasks listed before this one started: none of them is it.
    earlier: frozenset[int] = frozenset()


@dataclass(frozen=True)
class MoveProgress:
    """One ListMessageMoveTasks reading of a task."""

    status: str  # RUNNING, CANCELLING, COMPLETED, CANCELLED or FAILED
    moved: int  # ApproximateNumberOfMessagesMoved
    to_move: int | None  # ApproximateNumberOfMessagesToMove: SQS's count when the task began
    failure: str | None = None  # FailureReason, for FAILED

    @property
    def ended(self) -> bool:
        """True once SQS has stopped moving messages for this task."""
        return self.status in ENDED

    @classmethod
    def from_sqs(cls, entry: ListMessageMoveTasksResultEntryTypeDef) -> MoveProgress:
        """Adapt a ListMessageMoveTasks result."""
        to_move = entry.get("ApproximateNumberOfMessagesToMove")
        return cls(
            status=entry.get("Status", "?"),
            moved=int(entry.get("ApproximateNumberOfMessagesMoved", 0)),
            to_move=int(to_move) if to_move is not None else None,
            failure=entry.get("FailureReason"),
        )


def queue_arn(sqs: SQSClient, url: str) -> str:
    """A queue's ARN, from its URL."""
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]


def start_move_task(
    sqs: SQSClient, dlq_url: str, queue_url: str, ready: Callable[[], bool] = lambda: True
) -> MoveTask | None:
    """Have SQS move every dead letter to the delivery queue (server-side, asynchronous).

    A task already running from the DLQ to the delivery queue is joined, not started again:
    SQS refuses a second one, and a run that was interrupted while following its task picks
    it up this way. Raises MoveTaskBusy if the running task goes elsewhere.

    Before starting one, ``ready()`` is asked (not before joining one: scanning the DLQ would
    hide messages from the running task); None when it says no.
    """
    source, destination = queue_arn(sqs, dlq_url), queue_arn(sqs, queue_url)
    listed = move_tasks(sqs, source)
    running = _running(listed)
    if running is None:
        if not ready():
            return None
        earlier = frozenset(entry.get("StartedTimestamp", 0) for entry in listed)
        try:
            started = sqs.start_message_move_task(SourceArn=source, DestinationArn=destination)
        except NotImplementedError as error:  # moto in-process raises rather than answering
            raise MoveTaskUnsupported(str(error)) from None
        except ClientError as error:
            # Someone may have started one since we looked; SQS's answer to that is not
            # documented, so look again rather than read the error code.
            running = _running(move_tasks(sqs, source))
            if running is None:
                if _unsupported(error):
                    raise MoveTaskUnsupported(str(error)) from None
                raise
        else:
            return MoveTask(started["TaskHandle"], source, destination, earlier=earlier)
    # No DestinationArn: the task returns messages to the queues they came from, which for
    # this DLQ is the delivery queue.
    going_to = running.get("DestinationArn") or destination
    if going_to != destination:
        raise MoveTaskBusy(
            f"a move task from the DLQ to {going_to} is running (handle "
            f"{running.get('TaskHandle')}); wait for it or cancel it with aws sqs "
            "cancel-message-move-task"
        )
    return MoveTask(
        running.get("TaskHandle", ""),
        source,
        destination,
        joined=True,
        started_at=running.get("StartedTimestamp"),
    )


def follow_move_task(
    sqs: SQSClient,
    task: MoveTask,
    poll_seconds: float | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[MoveProgress]:
    """The task's progress, read every ``poll_seconds`` until it ends (the last one yielded).

    ListMessageMoveTasks gives the TaskHandle of running tasks only, so the task is recognised
    by its handle while it runs and by its StartedTimestamp once it has ended. If it ended
    before the first reading, it is the ended task that was not listed before it started.
    """
    poll = POLL_SECONDS if poll_seconds is None else poll_seconds
    started = task.started_at
    missed = 0
    while True:
        entries = move_tasks(sqs, task.source_arn)
        entry = _ours(entries, task, started)
        if entry is None:
            missed += 1
            if missed >= LOST_AFTER:
                raise MoveTaskLost(
                    f"the move task {task.handle} is not among the DLQ's recent tasks any more; "
                    "see relay dlq redrive --status-of-task"
                )
        else:
            missed = 0
            started = entry.get("StartedTimestamp", started)
            progress = MoveProgress.from_sqs(entry)
            yield progress
            if progress.ended:
                return
        sleep(poll)


def move_tasks(sqs: SQSClient, source_arn: str) -> list[ListMessageMoveTasksResultEntryTypeDef]:
    """The most recent move tasks (SQS keeps up to ten) from the queue ``source_arn``."""
    try:
        return sqs.list_message_move_tasks(SourceArn=source_arn, MaxResults=10)["Results"]
    except NotImplementedError as error:
        raise MoveTaskUnsupported(str(error)) from None
    except ClientError as error:
        if _unsupported(error):
            raise MoveTaskUnsupported(str(error)) from None
        raise


def _running(
    entries: Sequence[ListMessageMoveTasksResultEntryTypeDef],
) -> ListMessageMoveTasksResultEntryTypeDef | None:
    return next((entry for entry in entries if entry.get("Status") in RUNNING), None)


def _ours(
    entries: Sequence[ListMessageMoveTasksResultEntryTypeDef], task: MoveTask, started: int | None
) -> ListMessageMoveTasksResultEntryTypeDef | None:
    for entry in entries:
        if task.handle and entry.get("TaskHandle") == task.handle:
            return entry
        if started is not None and entry.get("StartedTimestamp") == started:
            return entry
    if started is None:
        new = [
            entry
            for entry in entries
            if entry.get("Status") in ENDED and entry.get("StartedTimestamp") not in task.earlier
        ]
        return max(new, key=lambda entry: entry.get("StartedTimestamp", 0), default=None)
    return None


def _unsupported(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    # botocore names the error after the HTTP status when the answer is not in SQS's protocol
    # at all (moto_server's HTML error page): not an SQS that knows the action.
    return code in UNSUPPORTED or status == 501 or code == str(status)
