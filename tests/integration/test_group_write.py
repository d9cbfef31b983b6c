"""Completion records written in groups: against moto's table, and through the delivery handler.

A put returns only once its own item is in the table; writers that arrive while a write is in
flight share the next BatchWriteItem; a failed or throttled write reaches every writer it left
unwritten, and only those.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from relay.group_write import MAX_GROUP, GroupWriter, NotWritten
from relay_local.lambda_runtime import LambdaContext, load_function
from tests.conftest import handler_session, lancepilot_message, received_records


class Calls:
    """Each BatchWriteItem a client makes, by its items' ids, at botocore's boundary; each waits
    ``delay`` first, as a network round trip would. ``answer`` may stand in for DynamoDB."""

    def __init__(self, client: Any, delay: float = 0.05) -> None:
        self.groups: list[list[str]] = []
        self.delay = delay
        self.answer: Any = None
        client.meta.events.register("before-call.dynamodb.BatchWriteItem", self._before)

    def _before(self, params: dict[str, Any], **_: Any) -> Any:
        [requests] = json.loads(params["body"])["RequestItems"].values()
        self.groups.append([r["PutRequest"]["Item"]["id"]["S"] for r in requests])
        time.sleep(self.delay)
        return self.answer(requests) if self.answer else None


def _item(key: str) -> dict[str, Any]:
    return {"id": {"S": key}, "status": {"S": "COMPLETED"}}


def _put_at_once(writer: GroupWriter, keys: list[str], read: Any) -> dict[str, Any]:
    """Each key put from its own thread, all released together; per key, what the put raised
    (None) and whether the item was readable the moment the put returned."""
    start = threading.Barrier(len(keys))

    def put(key: str) -> Any:
        start.wait()
        try:
            writer.put(_item(key))
        except NotWritten as error:
            return error
        return read(key)

    with ThreadPoolExecutor(len(keys)) as pool:
        return dict(zip(keys, pool.map(put, keys), strict=True))


@pytest.fixture
def table(aws: Any) -> Any:
    client = boto3.client("dynamodb")

    def read(key: str) -> bool:
        found = client.get_item(TableName=aws.table, Key={"id": {"S": key}}, ConsistentRead=True)
        return "Item" in found

    return client, aws.table, read


def test_writers_that_arrive_together_share_calls_and_each_returns_once_written(
    table: Any,
) -> None:
    client, name, read = table
    calls = Calls(client)
    keys = [f"k{i}" for i in range(40)]

    outcome = _put_at_once(GroupWriter(client.batch_write_item, name, ["id"]), keys, read)

    assert outcome == dict.fromkeys(keys, True)  # every put's item was there when it returned
    assert sorted(k for group in calls.groups for k in group) == sorted(keys)  # each once
    assert len(calls.groups) < len(keys) / 4  # the first alone, then the rest in groups
    assert max(len(group) for group in calls.groups) == MAX_GROUP


def test_a_lone_writer_writes_at_once(table: Any) -> None:
    client, name, read = table
    calls = Calls(client, delay=0)
    writer = GroupWriter(client.batch_write_item, name, ["id"])

    for key in ("a", "b"):
        writer.put(_item(key))

    assert calls.groups == [["a"], ["b"]]
    assert read("a")
    assert read("b")


def test_a_failed_call_reaches_each_writer_it_carried_and_the_next_group_still_writes(
    table: Any,
) -> None:
    client, name, read = table
    calls = Calls(client)
    failed: list[list[str]] = []

    def first_call_fails(requests: list[dict[str, Any]]) -> Any:
        if not failed:
            failed.append([r["PutRequest"]["Item"]["id"]["S"] for r in requests])
            raise ConnectionResetError("injected")
        return None  # moto writes them

    calls.answer = first_call_fails
    keys = [f"k{i}" for i in range(10)]

    outcome = _put_at_once(GroupWriter(client.batch_write_item, name, ["id"]), keys, read)

    [carried] = failed
    assert all(isinstance(outcome[key], NotWritten) for key in carried)
    assert {key: outcome[key] for key in keys if key not in carried} == {
        key: True for key in keys if key not in carried
    }
    assert len(calls.groups) == 2


def test_throttled_items_are_tried_again_and_only_those_never_written_fail(table: Any) -> None:
    client, name, read = table
    calls = Calls(client, delay=0)
    stubborn = "always-throttled"

    def throttle(requests: list[dict[str, Any]]) -> Any:
        # DynamoDB's answer: the requests it did not process, for the caller to send again.
        left = [r for r in requests if r["PutRequest"]["Item"]["id"]["S"] in (stubborn, "once")]
        if len(calls.groups) > 1:
            left = [r for r in left if r["PutRequest"]["Item"]["id"]["S"] == stubborn]
        for request in requests:
            if request not in left:
                client.put_item(TableName=name, Item=request["PutRequest"]["Item"])
        http = type("Http", (), {"status_code": 200, "headers": {}})()
        return http, {"UnprocessedItems": {name: left} if left else {}}

    calls.answer = throttle
    writer = GroupWriter(client.batch_write_item, name, ["id"])
    outcome: dict[str, Any] = {}
    for key in ("once", stubborn):
        try:
            writer.put(_item(key))
            outcome[key] = read(key)
        except NotWritten as error:
            outcome[key] = error

    assert outcome["once"] is True
    assert isinstance(outcome[stubborn], NotWritten)
    assert calls.groups[:2] == [["once"], ["once"]]  # the first answer's leftover, sent again


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
    assert len(written) <= 10  # two waves of 10 sends; 20 UpdateItems before grouping
