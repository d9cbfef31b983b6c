"""The hand-written IAM roles of template.yaml, enforced by moto: enough for the relay, no more.

Each function's role (the one its ``Role:`` names) is created in moto IAM with its inline policy,
the ``!Ref``/``!GetAtt`` in it resolved to the moto resources' real ARNs, and assumed through
STS. The real handlers then run with those credentials in their environment, as on Lambda, while
moto authorizes every call (``INITIAL_NO_AUTH_ACTION_COUNT`` = 0, via
``moto.core.enable_iam_authentication``). Setup and the assertions' own reads run outside that
scope, with moto's unchecked default credentials.

What moto's enforcement does not do by itself, and what this file does about it:

- It checks SQS calls against the queue's ARN, but Secrets Manager and DynamoDB calls against
  the resource ``*``, which no resource-scoped statement matches: every such call would be
  denied. ``_resources_as_aws_names_them`` gives moto's request handlers for those two services
  the resource AWS evaluates (the secret's ARN, the table's ARN). Fail-closed: anything it cannot
  resolve stays ``*`` and is denied.
- It names batch calls after the API (``sqs:DeleteMessageBatch``); AWS authorizes them as the
  single action (``sqs:DeleteMessage``), and the role rightly grants only that. So the event
  source's poll here deletes one message at a time: the same permission, in terms moto checks.
- X-Ray and CloudWatch Logs are not exercised: the relay's code calls neither (Lambda ships the
  logs, the X-Ray SDK sends segments over UDP to the daemon; tracing is off in tests).
- The trust policy (``lambda.amazonaws.com``) is not exercised: Lambda's own AssumeRole cannot
  be played here; the test assumes the role itself, outside the enforced scope.
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from moto.core import enable_iam_authentication
from moto.dynamodb.responses import DynamoHandler
from moto.secretsmanager.responses import SecretsManagerResponse

from relay_local import resources
from relay_local.esm import event_record
from relay_local.lambda_runtime import LambdaContext, load_function
from relay_local.sandbox import Fault
from tests.conftest import Webhook, bearer, fluents_message, lancepilot_message

if TYPE_CHECKING:
    from relay_local.sandbox import ProviderSandbox

ASYNC = {**bearer(), "prefer": "respond-async"}
ACCOUNT_REGION = "us-east-1:123456789012"  # moto's defaults
INTRINSICS = {"Sub", "Join", "If", "Select", "Split", "FindInMap", "ImportValue", "Base64"}


# --- moto: resources as AWS names them ---------------------------------------------------------


def _secret_arn(response: Any) -> str:
    secret_id = response._get_param("SecretId")
    secrets = response.backend.secrets
    return str(secrets[secret_id].arn) if secret_id and secret_id in secrets else "*"


def _table_arn(response: Any) -> str:
    # BatchWriteItem names its table (AWS authorizes each one) as a key of RequestItems.
    name = response._get_param("TableName") or next(
        iter(response._get_param("RequestItems") or {}), None
    )
    try:
        return str(response.dynamodb_backend.get_table(name).table_arn)
    except Exception:  # not a table (CreateTable, ListTables): no resource-scoped grant applies
        return "*"


@pytest.fixture(autouse=True)
def _resources_as_aws_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto asks ``_determine_resource`` for the resource to authorize; SQS has one, these don't."""
    for handler in (SecretsManagerResponse, DynamoHandler):
        assert not hasattr(handler, "_determine_resource"), "moto now resolves it: drop this"
    monkeypatch.setattr(SecretsManagerResponse, "_determine_resource", _secret_arn, raising=False)
    monkeypatch.setattr(DynamoHandler, "_determine_resource", _table_arn, raising=False)


# --- the stack's roles in moto -----------------------------------------------------------------

_template = functools.cache(resources.load_template)  # read-only here; parsing it takes a while


@dataclass
class Role:
    name: str
    credentials: dict[str, Any]  # STS AssumeRole's

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            aws_access_key_id=self.credentials["AccessKeyId"],
            aws_secret_access_key=self.credentials["SecretAccessKey"],
            aws_session_token=self.credentials["SessionToken"],
        )


@dataclass
class Stack:
    aws: Any  # conftest's Aws: unchecked clients and the resources' names
    arns: dict[str, str]  # logical id -> ARN of the moto resource
    webhook_role: Role
    delivery_role: Role
    other_queue_url: str
    other_secret_arn: str
    other_table: str


def _resolve(node: Any, refs: dict[str, str], arns: dict[str, str]) -> Any:
    """A policy document with its intrinsics replaced; an unknown one fails the test."""
    if isinstance(node, list):
        return [_resolve(item, refs, arns) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Ref"}:
        return refs[node["Ref"]]
    if set(node) == {"GetAtt"}:
        target = node["GetAtt"]
        logical_id, attribute = target.split(".") if isinstance(target, str) else target
        assert attribute == "Arn", f"unexpected !GetAtt {target} in a role policy"
        return arns[logical_id]
    assert not set(node) & INTRINSICS, f"unexpected intrinsic in a role policy: {node}"
    return {key: _resolve(value, refs, arns) for key, value in node.items()}


def _function_role(template: dict[str, Any], function: str) -> str:
    """The role a function runs with: its ``Role: !GetAtt <role>.Arn``."""
    role = template["Resources"][function]["Properties"]["Role"]
    assert set(role) == {"GetAtt"}, f"{function}'s Role is not a role of the stack"
    name, attribute = role["GetAtt"].split(".")
    assert attribute == "Arn"
    return str(name)


def _create_role(
    template: dict[str, Any], logical_id: str, refs: dict[str, str], arns: dict[str, str]
) -> Role:
    resource = template["Resources"][logical_id]
    assert resource["Type"] == "AWS::IAM::Role"
    props = resource["Properties"]
    assert set(props) <= {"Description", "AssumeRolePolicyDocument", "Policies"}, (
        "managed policies or a boundary would change what the role may do: test them too"
    )
    iam = boto3.client("iam")
    arn = iam.create_role(
        RoleName=logical_id, AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"])
    )["Role"]["Arn"]
    for policy in props["Policies"]:
        document = _resolve(policy["PolicyDocument"], refs, arns)
        iam.put_role_policy(
            RoleName=logical_id,
            PolicyName=policy["PolicyName"],
            PolicyDocument=json.dumps(document),
        )
    credentials = boto3.client("sts").assume_role(RoleArn=arn, RoleSessionName=logical_id)
    return Role(logical_id, credentials["Credentials"])


@pytest.fixture
def stack(aws: Any, relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The roles as template.yaml writes them, over the moto resources conftest built from it."""
    template = _template()

    def queue_arn(url: str) -> str:
        attributes = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])

    tokens_arn = aws.secrets.describe_secret(SecretId=relay_env["PROVIDER_TOKENS_SECRET"])["ARN"]
    auth_arn = aws.secrets.describe_secret(SecretId=relay_env["RELAY_AUTH_SECRET"])["ARN"]
    log_group = f"arn:aws:logs:{ACCOUNT_REGION}:log-group:/aws/lambda/webhook-relay"
    arns = {
        "DeliveryQueue": queue_arn(aws.queue_url),
        "DeliveryDeadLetterQueue": queue_arn(aws.dlq_url),
        "IdempotencyTable": aws.dynamodb.describe_table(TableName=aws.table)["Table"]["TableArn"],
        "WebhookFunctionLogGroup": f"{log_group}/webhook:*",  # never called: any ARN will do
        "DeliveryFunctionLogGroup": f"{log_group}/delivery:*",
    }
    refs = {"ProviderTokensSecret": tokens_arn, "RelayAuthSecret": auth_arn}
    # The template's !Ref of a secret is its ARN: the functions get ARNs, not names.
    monkeypatch.setenv("PROVIDER_TOKENS_SECRET", tokens_arn)
    monkeypatch.setenv("RELAY_AUTH_SECRET", auth_arn)

    webhook_role = _function_role(template, "WebhookFunction")
    delivery_role = _function_role(template, "DeliveryFunction")
    assert (webhook_role, delivery_role) == ("WebhookFunctionRole", "DeliveryFunctionRole")
    other_table = "someone-elses-table"
    aws.dynamodb.create_table(
        TableName=other_table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return Stack(
        aws=aws,
        arns={**arns, **refs},
        webhook_role=_create_role(template, webhook_role, refs, arns),
        delivery_role=_create_role(template, delivery_role, refs, arns),
        other_queue_url=aws.sqs.create_queue(QueueName="someone-elses-queue")["QueueUrl"],
        other_secret_arn=aws.secrets.create_secret(Name="someone-elses-secret", SecretString="{}")[
            "ARN"
        ],
        other_table=other_table,
    )


# --- the functions, run with a role ------------------------------------------------------------


@dataclass
class Function:
    module: Any
    denied: list[str] = field(default_factory=list)  # "Operation on <target>: <IAM action>"


def _botocore_session() -> botocore.session.Session:
    """A new session, as a new execution environment has, that reads its credentials afresh.

    Only the service models (botocore's JSON files, slow to parse) are shared between them.
    """
    session = botocore.session.get_session()
    session.register_component("data_loader", _shared_loader())
    return session


@functools.cache
def _shared_loader() -> Any:
    return botocore.session.get_session().get_component("data_loader")


_DENIAL = re.compile(r"User: (?P<principal>\S+) is not authorized to perform: (?P<action>[\w:*]+)")


def load_as(role: Role, name: str, monkeypatch: pytest.MonkeyPatch) -> Function:
    """Import ``functions/<name>/app.py`` as Lambda runs it under ``role``.

    Lambda hands a function its role's credentials in the environment; the relay's clients take
    them from boto3's default session (relay.runtime), made here rather than by Relay.from_env
    so that every call it makes can be watched for a denial.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", role.credentials["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", role.credentials["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", role.credentials["SessionToken"])
    session = boto3.Session(botocore_session=_botocore_session())
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    function = Function(module=None)

    def target(context: dict[str, Any]) -> str:
        try:
            params = json.loads(context.get("iam_test_body") or b"{}")
        except ValueError:
            return "?"
        table = params.get("TableName") or next(iter(params.get("RequestItems") or {}), None)
        return str(params.get("SecretId") or table or params.get("QueueUrl"))

    def remember_body(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["iam_test_body"] = params.get("body")

    def watch(http_response: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
        if http_response.status_code == 403:
            found = _DENIAL.search((http_response.content or b"").decode(errors="replace"))
            action = found["action"] if found else "403"
            function.denied.append(f"{model.name} on {target(context)}: {action}")

    session.events.register("before-call", remember_body)
    session.events.register("after-call", watch)
    function.module = load_function(name)
    return function


def denials(*functions: Function) -> str:
    """What the functions were refused, one per line; empty when nothing was."""
    return "\n".join(denial for function in functions for denial in function.denied)


def poll_as(role: Role, stack: Stack, handler: Any) -> tuple[list[dict[str, Any]], set[str]]:
    """One poll of the delivery queue's event source, which Lambda runs with the function's role.

    Receive, invoke with the records, delete what did not fail (ReportBatchItemFailures). One
    DeleteMessage per record: see the module docstring on batch calls.
    """
    sqs = role.client("sqs")
    url = stack.aws.queue_url
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    messages = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    assert messages, "nothing to deliver"
    event = {"Records": [event_record(m, arn["QueueArn"]) for m in messages]}
    answer = handler(event, LambdaContext(timeout_s=30))
    failed = {failure["itemIdentifier"] for failure in answer["batchItemFailures"]}
    for message in messages:
        if message["MessageId"] not in failed:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return messages, failed


# --- what the assertions read, unchecked -------------------------------------------------------


def queued(stack: Stack, url: str | None = None) -> list[dict[str, Any]]:
    """Every message visible on a queue (the delivery queue by default), left there."""
    return stack.aws.sqs.receive_message(
        QueueUrl=url or stack.aws.queue_url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
        VisibilityTimeout=0,
    ).get("Messages", [])


def in_flight(stack: Stack) -> int:
    attributes = stack.aws.sqs.get_queue_attributes(
        QueueUrl=stack.aws.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesNotVisible"])


def attribute(message: dict[str, Any], name: str) -> str | None:
    value = message.get("MessageAttributes", {}).get(name)
    return value["StringValue"] if value else None


def send(stack: Stack, body: dict[str, Any], **attributes: str) -> str:
    """A producer's message on the delivery queue; its message id."""
    return str(
        stack.aws.sqs.send_message(
            QueueUrl=stack.aws.queue_url,
            MessageBody=json.dumps(body),
            MessageAttributes={
                k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()
            },
        )["MessageId"]
    )


# --- sufficient: the webhook -------------------------------------------------------------------


def test_the_webhook_role_is_enough_to_send_now_replay_and_answer_from_the_record(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, lancepilot: ProviderSandbox
) -> None:
    webhook = load_as(stack.webhook_role, "webhook", monkeypatch)
    post = Webhook(webhook.module).post
    body = lancepilot_message(idempotency_key="iam-sync-1")

    with enable_iam_authentication():
        first = post(body, headers=bearer())  # both secrets, PutItem, BatchWriteItem
        again = post(body, headers=bearer())  # the record, returned by the refused put
        queued_again = post(body, headers=ASYNC)  # GetItem: the delivery's record answers

    assert not denials(webhook), denials(webhook)
    assert (first.status, again.status, queued_again.status) == (201, 201, 201), first.json
    assert again.json["id"] == queued_again.json["id"] == first.json["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert queued_again.headers["idempotent-replayed"] == "true"
    assert len(lancepilot.accepted()) == 1
    assert queued(stack) == []


def test_the_webhook_role_is_enough_to_free_the_key_of_a_refused_send(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, fluents: ProviderSandbox
) -> None:
    webhook = load_as(stack.webhook_role, "webhook", monkeypatch)
    post = Webhook(webhook.module).post
    body = fluents_message(idempotency_key="iam-refused-1")
    refusal = {"message": "to_number must be a mobile number", "error": "Bad Request"}
    fluents.enqueue(Fault.status(400, {**refusal, "statusCode": 400}))

    with enable_iam_authentication():
        refused = post(body, headers=bearer())  # DeleteItem: the failure keeps no record
        retried = post(body, headers=bearer())

    assert not denials(webhook), denials(webhook)
    assert refused.status == 502  # the provider's refusal, not 503 for a record left behind
    assert retried.status == 201
    assert "idempotent-replayed" not in retried.headers
    assert len(fluents.received) == 2


def test_the_webhook_role_is_enough_to_queue_with_respond_async(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, lancepilot: ProviderSandbox
) -> None:
    webhook = load_as(stack.webhook_role, "webhook", monkeypatch)
    raw = json.dumps(lancepilot_message()).encode()

    with enable_iam_authentication():
        answer = Webhook(webhook.module).post(
            raw=raw, headers={**ASYNC, "idempotency-key": "iam-async-1"}
        )

    assert not denials(webhook), denials(webhook)
    assert answer.status == 202, answer.json
    assert answer.headers["preference-applied"] == "respond-async"
    [message] = queued(stack)
    assert message["Body"] == raw.decode()
    assert attribute(message, "RelayId") == answer.json["id"]
    assert attribute(message, "IdempotencyKey") == "iam-async-1"
    assert lancepilot.received == []


def test_the_webhook_role_is_enough_to_hold_an_unanswered_send(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, lancepilot: ProviderSandbox
) -> None:
    webhook = load_as(stack.webhook_role, "webhook", monkeypatch)
    post = Webhook(webhook.module).post
    body = lancepilot_message(idempotency_key="iam-held-1")
    lancepilot.enqueue(Fault.hang(1.5))

    with enable_iam_authentication():
        held = post(body, headers=bearer())  # SendMessage to the DLQ, BatchWriteItem: kept
        again = post(body, headers=bearer())  # the record, returned by the refused put

    assert not denials(webhook), denials(webhook)
    assert (held.status, held.json["status"]) == (504, "held")
    assert (again.status, again.json) == (504, held.json)
    assert len(lancepilot.received) == 1
    [parked] = queued(stack, stack.aws.dlq_url)
    assert attribute(parked, "RelayId") == held.json["id"]
    assert attribute(parked, "PossiblyDelivered") == "true"
    assert queued(stack) == []


# --- sufficient: the delivery function and its event source ------------------------------------


def test_the_delivery_role_is_enough_to_deliver_a_batch(
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    lancepilot: ProviderSandbox,
    fluents: ProviderSandbox,
) -> None:
    webhook = load_as(stack.webhook_role, "webhook", monkeypatch)
    delivery = load_as(stack.delivery_role, "delivery", monkeypatch)
    with enable_iam_authentication():
        accepted = Webhook(webhook.module).post(
            lancepilot_message(text="via webhook"), headers=ASYNC
        )
    send(stack, lancepilot_message(text="from a producer"), IdempotencyKey="iam-batch-1")
    send(stack, fluents_message(text="to fluents"))

    with enable_iam_authentication():
        messages, failed = poll_as(stack.delivery_role, stack, delivery.module.lambda_handler)

    assert not denials(webhook, delivery), denials(webhook, delivery)
    assert accepted.status == 202
    assert (len(messages), failed) == (3, set())
    texts = sorted(sent.json["text"]["body"] for sent in lancepilot.accepted())
    assert texts == ["from a producer", "via webhook"]
    assert [sent.json["message"] for sent in fluents.accepted()] == ["to fluents"]
    assert (queued(stack), in_flight(stack)) == ([], 0)  # deleted under the role
    assert queued(stack, stack.aws.dlq_url) == []


def test_the_delivery_role_is_enough_to_dead_letter_with_the_reason(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, fluents: ProviderSandbox
) -> None:
    delivery = load_as(stack.delivery_role, "delivery", monkeypatch)
    refusal = {"message": "to_number must be a mobile number", "error": "Bad Request"}
    fluents.set_default(Fault.status(400, {**refusal, "statusCode": 400}))
    body = fluents_message(idempotency_key="iam-dead-1")
    send(stack, body, RelayId="relay-iam-1")

    with enable_iam_authentication():
        messages, failed = poll_as(stack.delivery_role, stack, delivery.module.lambda_handler)

    assert not denials(delivery), denials(delivery)
    assert (len(messages), failed) == (1, set())  # parked, not handed back
    [parked] = queued(stack, stack.aws.dlq_url)
    assert json.loads(parked["Body"]) == body
    assert attribute(parked, "ErrorKind") == "permanent"
    assert attribute(parked, "ErrorStatus") == "400"
    assert "to_number must be a mobile number" in (attribute(parked, "ErrorMessage") or "")
    assert attribute(parked, "RelayId") == "relay-iam-1"
    assert (queued(stack), in_flight(stack)) == ([], 0)
    # The failed send kept no idempotency record (DeleteItem): the key is free for a redrive.
    assert stack.aws.dynamodb.scan(TableName=stack.aws.table)["Count"] == 0


def test_the_delivery_role_is_enough_to_back_off_a_retryable_failure(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, lancepilot: ProviderSandbox
) -> None:
    delivery = load_as(stack.delivery_role, "delivery", monkeypatch)
    lancepilot.set_default(Fault.status(503))
    message_id = send(stack, lancepilot_message())

    with enable_iam_authentication():
        _, failed = poll_as(stack.delivery_role, stack, delivery.module.lambda_handler)

    assert not denials(delivery), denials(delivery)
    assert failed == {message_id}
    assert queued(stack, stack.aws.dlq_url) == []
    # Received with the queue's 360 s visibility; ChangeMessageVisibility brought that down to
    # the backoff (REDELIVERY_BASE_SECONDS=1). A denied change would keep it away for 6 minutes.
    assert (queued(stack), in_flight(stack)) == ([], 1)
    time.sleep(1.2)
    [back] = queued(stack)
    assert back["MessageId"] == message_id
    assert back["Attributes"]["ApproximateReceiveCount"] == "2"


# --- tight: what each role may do, and no more ------------------------------------------------


def _secret(logical_id: str | None) -> Any:
    def call(s: Stack, client: Any) -> Any:
        secret = s.arns[logical_id] if logical_id else s.other_secret_arn
        return client("secretsmanager").get_secret_value(SecretId=secret)

    return call


def _queue(s: Stack, logical_id: str | None) -> str:
    urls = {"DeliveryQueue": s.aws.queue_url, "DeliveryDeadLetterQueue": s.aws.dlq_url}
    return str(urls[logical_id]) if logical_id else s.other_queue_url


def _send(logical_id: str | None) -> Any:
    return lambda s, client: client("sqs").send_message(
        QueueUrl=_queue(s, logical_id), MessageBody="{}"
    )


def _receive(logical_id: str | None) -> Any:
    return lambda s, client: client("sqs").receive_message(QueueUrl=_queue(s, logical_id))


def _get_item(ours: bool) -> Any:
    key = {"id": {"S": "webhook-relay#deliver#probe"}}
    return lambda s, client: client("dynamodb").get_item(
        TableName=s.aws.table if ours else s.other_table, Key=key
    )


def _scan(s: Stack, client: Any) -> Any:
    return client("dynamodb").scan(TableName=s.aws.table)


# The same calls for both roles; "other" is a resource of the account outside the stack.
PROBES = {
    "GetSecretValue ProviderTokensSecret": _secret("ProviderTokensSecret"),
    "GetSecretValue RelayAuthSecret": _secret("RelayAuthSecret"),
    "GetSecretValue other secret": _secret(None),
    "SendMessage DeliveryQueue": _send("DeliveryQueue"),
    "SendMessage DeliveryDeadLetterQueue": _send("DeliveryDeadLetterQueue"),
    "SendMessage other queue": _send(None),
    "ReceiveMessage DeliveryQueue": _receive("DeliveryQueue"),
    "ReceiveMessage DeliveryDeadLetterQueue": _receive("DeliveryDeadLetterQueue"),
    "ReceiveMessage other queue": _receive(None),
    "GetItem IdempotencyTable": _get_item(ours=True),
    "GetItem other table": _get_item(ours=False),
    "Scan IdempotencyTable": _scan,
}
ALLOWED = "allowed"


def denied(action: str) -> str:
    return f"denied {action}"


EXPECTED = {
    "webhook": {
        "GetSecretValue ProviderTokensSecret": ALLOWED,
        "GetSecretValue RelayAuthSecret": ALLOWED,
        "GetSecretValue other secret": denied("secretsmanager:GetSecretValue"),
        "SendMessage DeliveryQueue": ALLOWED,
        "SendMessage DeliveryDeadLetterQueue": ALLOWED,  # a sync send with no answer, held
        "SendMessage other queue": denied("sqs:SendMessage"),
        "ReceiveMessage DeliveryQueue": denied("sqs:ReceiveMessage"),  # the event source's
        "ReceiveMessage DeliveryDeadLetterQueue": denied("sqs:ReceiveMessage"),
        "ReceiveMessage other queue": denied("sqs:ReceiveMessage"),
        "GetItem IdempotencyTable": ALLOWED,
        "GetItem other table": denied("dynamodb:GetItem"),
        "Scan IdempotencyTable": denied("dynamodb:Scan"),
    },
    "delivery": {
        "GetSecretValue ProviderTokensSecret": ALLOWED,
        "GetSecretValue RelayAuthSecret": denied("secretsmanager:GetSecretValue"),  # callers'
        "GetSecretValue other secret": denied("secretsmanager:GetSecretValue"),
        "SendMessage DeliveryQueue": denied("sqs:SendMessage"),  # a producer's right
        "SendMessage DeliveryDeadLetterQueue": ALLOWED,
        "SendMessage other queue": denied("sqs:SendMessage"),
        "ReceiveMessage DeliveryQueue": ALLOWED,
        "ReceiveMessage DeliveryDeadLetterQueue": denied("sqs:ReceiveMessage"),  # send only
        "ReceiveMessage other queue": denied("sqs:ReceiveMessage"),
        "GetItem IdempotencyTable": ALLOWED,
        "GetItem other table": denied("dynamodb:GetItem"),
        "Scan IdempotencyTable": denied("dynamodb:Scan"),
    },
}


def _outcome(role: Role, call: Any, stack: Stack) -> str:
    try:
        call(stack, role.client)
    except ClientError as error:
        if error.response["ResponseMetadata"]["HTTPStatusCode"] != 403:
            raise
        found = _DENIAL.search(str(error))
        if found is None or f":assumed-role/{role.name}/" not in found["principal"]:
            return f"refused otherwise: {error}"  # not this role's policy saying no
        return denied(found["action"])
    return ALLOWED


@pytest.mark.parametrize("function", ["webhook", "delivery"])
def test_the_role_allows_its_own_resources_and_refuses_the_rest(
    stack: Stack, function: str
) -> None:
    role = stack.webhook_role if function == "webhook" else stack.delivery_role

    with enable_iam_authentication():
        outcomes = {name: _outcome(role, call, stack) for name, call in PROBES.items()}

    assert outcomes == EXPECTED[function]
