"""Completion records written in groups: against moto's table, and through the delivery handler.

A put returns only once its own item is in the table; writers that arrive while a write is in
flight share the next BatchWriteItem; a failed or throttled write reaches every writer it left
unwritten, and only those; nothing that escapes a write leaves a writer waiting.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from relay import group_write
from relay.group_write import MAX_GROUP, GroupWriter, NotWritten
from relay_local.lambda_runtime import LambdaContext, load_function
from tests.conftest import handler_session, lancepilot_message, received_records


class Calls:
    """Each BatchWriteItem a client makes, by its items' ids, at botocore's boundary.

    ``answer(call_number, requests)`` may stand in for DynamoDB: None lets moto answer, a
    ``(http, parsed)`` pair is the answer, and what it raises is the call's error.
    """

    def __init__(self, client: Any) -> None:
        self.groups: list[list[str]] = []
        self.answer: Any = None
        client.meta.events.register("before-call.dynamodb.BatchWriteItem", self._before)

    def _before(self, params: dict[str, Any], **_: Any) -> Any:
        [requests] = json.loads(params["body"])["RequestItems"].values()
        self.groups.append([_id(r["PutRequest"]["Item"]) for r in requests])
        return self.answer(len(self.groups), requests) if self.answer else None


def _id(item: dict[str, Any]) -> str:
    return str(item["id"]["S"])


def _item(key: str, status: str = "COMPLETED") -> dict[str, Any]:
    return {"id": {"S": key}, "status": {"S": status}}


def _queued(writer: GroupWriter, count: int) -> None:
    """Hold the first call until ``count`` writers wait behind it: so they arrive together
    however slowly this machine starts threads (the queue is the writer's own)."""
    limit = time.monotonic() + 10
    while len(writer._pending) < count:
        assert time.monotonic() < limit, "the writers never queued"
        time.sleep(0.005)


# A broken hand-over would leave a writer waiting: fail the test, don't hang the run.
RESULT_LIMIT = 30


def _first_call_begun(calls: Calls) -> None:
    """Wait until the first BatchWriteItem reaches botocore: its group is taken by then."""
    limit = time.monotonic() + 10
    while not calls.groups:
        assert time.monotonic() < limit, "the first write never began"
        time.sleep(0.001)


def _held_first(writer: GroupWriter, count: int, second: Any = None) -> Any:
    """A ``Calls.answer``: the first call held until ``count`` writers queue behind it, the
    second answered by ``second(requests)`` (moto answers when it is None, and every later one)."""

    def answer(n: int, requests: list[dict[str, Any]]) -> Any:
        if n == 1:
            return _queued(writer, count)
        return second(requests) if n == 2 and second else None

    return answer


def _put_at_once(
    writer: GroupWriter, calls: Calls, items: list[dict[str, Any]], read: Any
) -> list[Any]:
    """Each item put from its own thread, the first alone, the rest once its call has begun; per
    item, what the put raised, or whether the item was readable the moment the put returned."""

    def put(item: dict[str, Any]) -> Any:
        try:
            writer.put(item)
        except NotWritten as error:
            return error
        return read(_id(item))

    with ThreadPoolExecutor(len(items)) as pool:
        first = pool.submit(put, items[0])
        _first_call_begun(calls)
        rest = [pool.submit(put, item) for item in items[1:]]
        return [first.result(RESULT_LIMIT), *(f.result(RESULT_LIMIT) for f in rest)]


@pytest.fixture
def table(aws: Any) -> Any:
    client = boto3.client("dynamodb")

    def read(key: str) -> bool:
        found = client.get_item(TableName=aws.table, Key={"id": {"S": key}}, ConsistentRead=True)
        return "Item" in found

    return client, aws.table, read


def _writer(table: Any) -> GroupWriter:
    client, name, _ = table
    return GroupWriter(client.batch_write_item, name, ["id"])


def test_writers_that_arrive_together_share_calls_and_each_returns_once_written(
    table: Any,
) -> None:
    client, _, read = table
    calls, writer = Calls(client), _writer(table)
    calls.answer = _held_first(writer, 39)
    keys = [f"k{i}" for i in range(40)]

    outcome = _put_at_once(writer, calls, [_item(k) for k in keys], read)

    assert outcome == [True] * 40  # every put's item was there when it returned
    assert [len(group) for group in calls.groups] == [1, MAX_GROUP, 39 - MAX_GROUP]
    assert sorted(k for group in calls.groups for k in group) == sorted(keys)  # each once


def test_a_lone_writer_writes_at_once(table: Any) -> None:
    client, _, read = table
    calls, writer = Calls(client), _writer(table)

    for key in ("a", "b"):
        writer.put(_item(key))

    assert calls.groups == [["a"], ["b"]]
    assert read("a")
    assert read("b")


def test_a_failed_call_reaches_exactly_the_writers_it_carried(table: Any) -> None:
    client, _, read = table
    calls, writer = Calls(client), _writer(table)

    def fail(_: Any) -> None:
        raise ConnectionResetError("injected")

    calls.answer = _held_first(writer, 9, fail)
    keys = [f"k{i}" for i in range(10)]

    outcome = _put_at_once(writer, calls, [_item(k) for k in keys], read)

    assert calls.groups == [keys[:1], keys[1:]]
    assert outcome[0] is True
    assert all(isinstance(error, NotWritten) for error in outcome[1:])
    assert not any(read(k) for k in keys[1:])


def test_throttled_items_fail_their_writers_alone(table: Any) -> None:
    client, name, read = table
    calls, writer = Calls(client), _writer(table)

    def throttle_b(requests: list[dict[str, Any]]) -> Any:
        # DynamoDB's answer: what it did not process, for the caller to send again.
        left = [r for r in requests if _id(r["PutRequest"]["Item"]) == "b"]
        for request in requests:
            if request not in left:
                client.put_item(TableName=name, Item=request["PutRequest"]["Item"])
        http = type("Http", (), {"status_code": 200, "headers": {}})()
        return http, {"UnprocessedItems": {name: left}}

    calls.answer = _held_first(writer, 3, throttle_b)

    outcome = _put_at_once(writer, calls, [_item(k) for k in ("lead", "a", "b", "c")], read)

    assert calls.groups == [["lead"], ["a", "b", "c"]]  # not sent again: see relay.group_write
    assert [type(o).__name__ for o in outcome] == ["bool", "bool", "NotWritten", "bool"]
    assert not read("b")


def test_a_later_put_of_the_same_key_in_one_group_wins(table: Any) -> None:
    client, name, _ = table
    calls, writer = Calls(client), _writer(table)
    calls.answer = _held_first(writer, 2)

    def put(status: str) -> Any:
        try:
            writer.put(_item("same", status))
        except NotWritten as error:
            return str(error)
        return status

    with ThreadPoolExecutor(3) as pool:
        lead = pool.submit(writer.put, _item("lead"))
        _first_call_begun(calls)
        earlier = pool.submit(put, "INPROGRESS")
        while len(writer._pending) < 1:
            time.sleep(0.001)
        later = pool.submit(put, "COMPLETED")
        lead.result(RESULT_LIMIT)

    assert earlier.result(RESULT_LIMIT) == "superseded by a later put of the same key"
    assert later.result(RESULT_LIMIT) == "COMPLETED"
    kept = client.get_item(TableName=name, Key={"id": {"S": "same"}}, ConsistentRead=True)
    assert kept["Item"]["status"] == {"S": "COMPLETED"}
    assert calls.groups == [["lead"], ["same"]]


class Abort(BaseException):
    """What no ``except Exception`` stops (as KeyboardInterrupt)."""


def test_whatever_escapes_a_leader_leaves_nobody_waiting_and_the_writer_usable(
    table: Any,
) -> None:
    client, _, read = table
    calls, writer = Calls(client), _writer(table)

    def abort(_: Any) -> None:
        raise Abort

    calls.answer = _held_first(writer, 3, abort)

    def put(key: str) -> Any:
        try:
            writer.put(_item(key))
        except (NotWritten, Abort) as error:
            return type(error).__name__
        return read(key)

    with ThreadPoolExecutor(4) as pool:
        lead = pool.submit(put, "lead")
        _first_call_begun(calls)
        followers = list(pool.map(put, ["a", "b", "c"], timeout=RESULT_LIMIT))

    assert lead.result(RESULT_LIMIT) is True
    assert sorted(followers) == ["Abort", "NotWritten", "NotWritten"]  # its leader saw it
    writer.put(_item("after"))  # not blocked behind the aborted write
    assert read("after")


def test_a_writer_whose_turn_does_not_come_in_time_withdraws_unwritten(
    table: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_write, "WAIT_LIMIT_SECONDS", 0.2)
    client, _, read = table
    calls, writer = Calls(client), _writer(table)
    calls.answer = lambda n, _: time.sleep(1.0) if n == 1 else None  # a slow first call

    outcome = _put_at_once(writer, calls, [_item("lead"), _item("late")], read)

    assert outcome[0] is True
    assert str(outcome[1]) == "its turn to be written did not come in time"
    assert calls.groups == [["lead"]]  # withdrawn: never sent
    assert not read("late")


def test_a_writer_taken_into_a_slow_write_waits_for_it_past_its_turn_limit(
    table: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_write, "WAIT_LIMIT_SECONDS", 1.0)
    client, _, read = table
    calls, writer = Calls(client), _writer(table)

    # The second call outlasts every waiter's limit, after their group was taken.
    calls.answer = _held_first(writer, 3, lambda _: time.sleep(2.0))

    outcome = _put_at_once(writer, calls, [_item(k) for k in ("lead", "a", "b", "c")], read)

    assert outcome == [True] * 4  # taken is too late to withdraw: they wait and are written
    assert calls.groups == [["lead"], ["a", "b", "c"]]


def test_a_grouped_completion_record_is_the_one_powertools_would_write(aws: Any) -> None:
    """The put replaces Powertools' private UpdateItem: pin it to Powertools' own record, so
    an upgrade that changes the record's attributes fails here."""
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
    )

    from relay.idempotency import _GroupedCompletions

    client = boto3.client("dynamodb")
    config = IdempotencyConfig(event_key_jmespath="key", payload_validation_jmespath="message")
    data = {"key": "k", "message": {"to": "+14155550123"}}
    records = []
    for store in (
        DynamoDBPersistenceLayer(table_name=aws.table, boto3_client=client),
        _GroupedCompletions(table_name=aws.table, boto3_client=client),
    ):
        store.configure(config, key_prefix=type(store).__name__)
        store.save_inprogress(data, remaining_time_in_millis=60_000)  # as under a handler
        store.save_success(data, {"status": "delivered"})
        [item] = [
            i
            for i in client.scan(TableName=aws.table)["Items"]
            if i["id"]["S"].startswith(type(store).__name__)
        ]
        records.append(item)

    powertools, grouped = records
    assert set(powertools) - set(grouped) == {"in_progress_expiration"}  # read of INPROGRESS only
    assert set(grouped) <= set(powertools)
    for name in ("status", "data", "validation"):
        assert grouped[name] == powertools[name]
    assert abs(int(grouped["expiration"]["N"]) - int(powertools["expiration"]["N"])) <= 2


def test_a_batch_writes_its_completion_records_in_fewer_calls_than_messages(
    relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, aws: Any, lancepilot: Any
) -> None:
    monkeypatch.setenv("PROVIDER_CONCURRENCY", "10")
    written: list[int] = []  # items per BatchWriteItem

    def round_trip(params: dict[str, Any], **_: Any) -> None:
        items = json.loads(params["body"])["RequestItems"].values()
        written.append(sum(len(requests) for requests in items))
        time.sleep(0.05)  # completions that land meanwhile go in the next call

    events = handler_session().events
    events.register("before-call.dynamodb.BatchWriteItem", round_trip)
    try:
        handler = load_function("delivery").lambda_handler
        for i in range(20):
            aws.sqs.send_message(
                QueueUrl=aws.queue_url, MessageBody=json.dumps(lancepilot_message(text=str(i)))
            )
        lancepilot.latency = 0.1
        answer = handler({"Records": received_records(aws, 20)}, LambdaContext())
    finally:
        lancepilot.latency = 0.0
        events.unregister("before-call.dynamodb.BatchWriteItem", round_trip)

    assert answer == {"batchItemFailures": []}
    assert len(lancepilot.accepted()) == 20
    records = aws.dynamodb.scan(TableName=aws.table)["Items"]
    assert [r["status"]["S"] for r in records] == ["COMPLETED"] * 20
    assert all(r["data"]["S"] for r in records)  # the answer a replay returns
    assert sum(written) == 20
    assert len(written) < 20  # grouped: one UpdateItem a message before
