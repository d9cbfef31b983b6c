"""Static checks of template.yaml: what the relay and its operators rely on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"

PUBLIC_ENV_VARS = {
    "LANCEPILOT_API_URL",
    "FLUENTS_API_URL",
    "PROVIDER_TOKENS_SECRET",
    "RELAY_AUTH_SECRET",
    "DEFAULT_PROVIDER",
    "LANCEPILOT_WORKSPACE_ID",
    "FLUENTS_FROM_NUMBER",
}
SECRETS = ("ProviderTokensSecret", "RelayAuthSecret")


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags into their long form dicts."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    key = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    return {key: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)  # a SafeLoader subclass


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


@pytest.fixture(scope="module")
def function(resources: dict[str, Any]) -> dict[str, Any]:
    fn = resources["WebhookFunction"]
    assert fn["Type"] == "AWS::Serverless::Function"
    return fn["Properties"]


def test_sam_transform(template: dict[str, Any]) -> None:
    assert template["Transform"] == "AWS::Serverless-2016-10-31"


def test_globals_runtime_and_powertools(template: dict[str, Any]) -> None:
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.13"
    assert glob["Architectures"] == ["arm64"]
    assert glob["Tracing"] == "Active"
    assert glob["MemorySize"] == 256
    env = glob["Environment"]["Variables"]
    assert env["POWERTOOLS_SERVICE_NAME"] == "webhook-relay"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert env["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}
    assert template["Parameters"]["LogLevel"]["Default"] == "INFO"


def test_event_logging_never_enabled(template: dict[str, Any]) -> None:
    # Logging whole events would put message bodies and phone numbers in CloudWatch.
    assert "POWERTOOLS_LOGGER_LOG_EVENT" not in TEMPLATE.read_text()


def test_layer(resources: dict[str, Any]) -> None:
    layer = resources["RelayLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    props = layer["Properties"]
    assert props["ContentUri"] == "layers/relay"
    assert props["CompatibleRuntimes"] == ["python3.13"]
    assert props["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    makefile = (REPO_ROOT / "layers/relay/Makefile").read_text()
    assert "build-RelayLayer:" in makefile
    for flag in (
        "--platform manylinux2014_aarch64",
        "--python-version 3.13",
        "--only-binary=:all:",
        "--no-deps",
    ):
        assert flag in makefile


def test_function_code_and_handler(resources: dict[str, Any], function: dict[str, Any]) -> None:
    assert function["CodeUri"] == "functions/webhook"
    assert function["Handler"] == "app.lambda_handler"
    assert resources["WebhookFunction"]["Metadata"]["BuildMethod"] == "makefile"
    assert "build-WebhookFunction:" in (REPO_ROOT / "functions/webhook/Makefile").read_text()
    assert function["Layers"] == [{"Ref": "RelayLayer"}]


def test_function_timeout_below_api_gateway_limit(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    timeout = function.get("Timeout", template["Globals"]["Function"].get("Timeout"))
    assert isinstance(timeout, int)
    assert timeout < 29


def test_route(function: dict[str, Any]) -> None:
    events = function["Events"]
    assert len(events) == 1
    (event,) = events.values()
    assert event["Type"] == "HttpApi"
    props = event["Properties"]
    assert props["ApiId"] == {"Ref": "HttpApi"}
    assert props["Path"] == "/v1/messages"
    assert props["Method"].upper() == "POST"
    assert str(props["PayloadFormatVersion"]) == "2.0"
    assert props["TimeoutInMillis"] <= 30000


def environment(template: dict[str, Any], function: dict[str, Any]) -> dict[str, Any]:
    """What the function sees: Globals' variables, then its own."""
    return {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **function.get("Environment", {}).get("Variables", {}),
    }


def test_public_env_vars(template: dict[str, Any], function: dict[str, Any]) -> None:
    env = environment(template, function)
    assert set(env) >= PUBLIC_ENV_VARS
    assert env["PROVIDER_TOKENS_SECRET"] == {"Ref": "ProviderTokensSecret"}
    assert env["RELAY_AUTH_SECRET"] == {"Ref": "RelayAuthSecret"}
    params = template["Parameters"]
    for var in PUBLIC_ENV_VARS - {"PROVIDER_TOKENS_SECRET", "RELAY_AUTH_SECRET"}:
        ref = env[var]["Ref"]
        assert ref in params, f"{var} refers to unknown parameter {ref}"
    assert env["LANCEPILOT_API_URL"] == {"Ref": "LancepilotApiUrl"}
    assert params["LancepilotApiUrl"]["Default"] == "https://lancepilot.com/api/v3"
    assert params["FluentsApiUrl"]["Default"] == "https://api.fluents.ai"
    assert params["DefaultProvider"]["Default"] == ""
    assert set(params["DefaultProvider"]["AllowedValues"]) == {"", "lancepilot", "fluents"}


@pytest.mark.parametrize(
    ("parameter", "good", "bad"),
    [
        (
            "LancepilotWorkspaceId",
            ["", "0f8fad5b-d9cb-469f-a165-70867728950e"],
            ["x", "0f8fad5b-d9cb-469f-a165-70867728950", "0f8fad5bd9cb469fa16570867728950e"],
        ),
        (
            "FluentsFromNumber",
            ["", "+14155550100", "+4915112345678"],
            ["14155550100", "+0123456789", "+1415", "+1234567890123456", "+1 415 555"],
        ),
    ],
)
def test_parameter_patterns(
    template: dict[str, Any], parameter: str, good: list[str], bad: list[str]
) -> None:
    param = template["Parameters"][parameter]
    assert param["Default"] == ""
    pattern = re.compile(param["AllowedPattern"])
    for value in good:
        assert pattern.fullmatch(value), value
    for value in bad:
        assert not pattern.fullmatch(value), value


def test_secrets_fail_closed_and_retained(resources: dict[str, Any]) -> None:
    for name in SECRETS:
        secret = resources[name]
        assert secret["Type"] == "AWS::SecretsManager::Secret"
        assert secret["DeletionPolicy"] == "Retain"
        assert secret["UpdateReplacePolicy"] == "Retain"
        assert "put-secret-value" in secret["Properties"]["Description"]
    tokens = yaml.safe_load(resources["ProviderTokensSecret"]["Properties"]["SecretString"])
    assert tokens == {"lancepilot": "REPLACE_ME", "fluents": "REPLACE_ME"}
    auth = yaml.safe_load(resources["RelayAuthSecret"]["Properties"]["SecretString"])
    assert auth == {"api_keys": [], "signing_secrets": []}


ROLES = {"WebhookFunction": "WebhookFunctionRole", "DeliveryFunction": "DeliveryFunctionRole"}
# X-Ray has no resource-level permissions: the only statement allowed on "*".
XRAY_ACTIONS = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
ITEM_ACTIONS = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:DeleteItem",
]


def _arn(resource: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [resource, "Arn"]}


def _grants(resources: dict[str, Any], role: str) -> dict[str, list[Any]]:
    """Each action the role allows, with the resources it allows it on."""
    grants: dict[str, list[Any]] = {}
    for policy in resources[role]["Properties"]["Policies"]:
        for statement in _statements(policy["PolicyDocument"]):
            assert statement["Effect"] == "Allow"
            actions, targets = statement["Action"], statement["Resource"]
            for action in [actions] if isinstance(actions, str) else actions:
                grants.setdefault(action, []).extend(
                    targets if isinstance(targets, list) else [targets]
                )
    return grants


def test_webhook_role_grants_exactly_what_it_uses(resources: dict[str, Any]) -> None:
    assert _grants(resources, "WebhookFunctionRole") == {
        "logs:CreateLogStream": [_arn("WebhookFunctionLogGroup")],
        "logs:PutLogEvents": [_arn("WebhookFunctionLogGroup")],
        "secretsmanager:GetSecretValue": [
            {"Ref": "ProviderTokensSecret"},
            {"Ref": "RelayAuthSecret"},
        ],
        # Prefer: respond-async; and a sync send with no answer, parked ("held").
        "sqs:SendMessage": [_arn("DeliveryQueue"), _arn("DeliveryDeadLetterQueue")],
        **{action: [_arn("IdempotencyTable")] for action in ITEM_ACTIONS},
        **{action: ["*"] for action in XRAY_ACTIONS},
    }


def test_the_webhook_can_hold_an_unanswered_send_in_the_dead_letter_queue(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    # A synchronous send that got no answer is parked ("held"), not left to a retry.
    env = environment(template, function)
    assert env["DEAD_LETTER_QUEUE_URL"] == {"Ref": "DeliveryDeadLetterQueue"}
    assert env["DELIVERY_QUEUE_URL"] == {"Ref": "DeliveryQueue"}


def test_delivery_role_grants_exactly_what_it_uses(resources: dict[str, Any]) -> None:
    consume = ["ReceiveMessage", "DeleteMessage", "GetQueueAttributes", "ChangeMessageVisibility"]
    assert _grants(resources, "DeliveryFunctionRole") == {
        "logs:CreateLogStream": [_arn("DeliveryFunctionLogGroup")],
        "logs:PutLogEvents": [_arn("DeliveryFunctionLogGroup")],
        # Provider tokens only: the delivery function never sees callers' keys.
        "secretsmanager:GetSecretValue": [{"Ref": "ProviderTokensSecret"}],
        # The event source polls with the function's role; the relay backs off by visibility.
        **{f"sqs:{action}": [_arn("DeliveryQueue")] for action in consume},
        "sqs:SendMessage": [_arn("DeliveryDeadLetterQueue")],  # dead-letter with the reason
        **{action: [_arn("IdempotencyTable")] for action in ITEM_ACTIONS},
        **{action: ["*"] for action in XRAY_ACTIONS},
    }


def test_each_function_has_its_own_role_that_only_lambda_assumes(
    resources: dict[str, Any],
) -> None:
    for function, role in ROLES.items():
        assert resources[function]["Properties"]["Role"] == _arn(role)
        props = resources[role]["Properties"]
        assert props["AssumeRolePolicyDocument"]["Statement"] == [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ]
        # Managed policies cannot be scoped to this stack; a RoleName would need
        # CAPABILITY_NAMED_IAM and clash between stacks.
        assert not {"ManagedPolicyArns", "RoleName", "PermissionsBoundary"} & set(props)
    # The event source reads the queue the role lets it read.
    (event,) = resources["DeliveryFunction"]["Properties"]["Events"].values()
    assert _grants(resources, "DeliveryFunctionRole")["sqs:ReceiveMessage"] == [
        event["Properties"]["Queue"]
    ]


def test_delivery_function_and_its_event_source(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    fn = resources["DeliveryFunction"]
    props = fn["Properties"]
    assert (props["CodeUri"], props["Handler"]) == ("functions/delivery", "app.lambda_handler")
    assert fn["Metadata"]["BuildMethod"] == "makefile"
    assert "build-DeliveryFunction:" in (REPO_ROOT / "functions/delivery/Makefile").read_text()
    assert props["Layers"] == [{"Ref": "RelayLayer"}]
    (event,) = props["Events"].values()
    assert event["Type"] == "SQS"
    source = event["Properties"]
    assert source["Queue"] == {"Fn::GetAtt": ["DeliveryQueue", "Arn"]}
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert source["BatchSize"] == {"Ref": "DeliveryBatchSize"}
    # Its CPU follows its memory: a parameter, defaulting to the Globals' size.
    assert props["MemorySize"] == {"Ref": "DeliveryMemorySize"}
    assert (
        template["Parameters"]["DeliveryMemorySize"]["Default"]
        == template["Globals"]["Function"]["MemorySize"]
    )
    assert source["MaximumBatchingWindowInSeconds"] == {"Ref": "DeliveryBatchingWindowSeconds"}
    assert source["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "DeliveryMaxConcurrency"}
    env = environment(template, props)
    assert env["DEAD_LETTER_QUEUE_URL"] == {"Ref": "DeliveryDeadLetterQueue"}
    assert env["DELIVERY_QUEUE_URL"] == {"Ref": "DeliveryQueue"}
    assert env["IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    # The handler dead-letters on its last receive; the redrive policy allows one more (see
    # test_the_queue_allows_one_receive_more_than_the_function).
    assert env["MAX_RECEIVE_COUNT"] == {"Ref": "MaxReceiveCount"}


def test_the_queue_allows_one_receive_more_than_the_function(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    # A crash, a timeout or a failed dead-letter send on the function's last receive leaves
    # the message to one receive more, where the function parks it with a reason; with equal
    # counts SQS would move it to the DLQ with none. For every value the parameter allows.
    parameter = template["Parameters"]["MaxReceiveCount"]
    env = environment(template, resources["DeliveryFunction"]["Properties"])
    assert env["MAX_RECEIVE_COUNT"] == {"Ref": "MaxReceiveCount"}
    given = resources["DeliveryQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    index, choices = given["Fn::Select"]
    assert index == {"Ref": "MaxReceiveCount"}
    allowed = [int(value) for value in parameter["AllowedValues"]]
    assert allowed == list(range(2, 101))  # whole numbers: an index into the list
    assert [int(choices[value]) for value in allowed] == [value + 1 for value in allowed]


def test_queues_are_encrypted_and_outlast_the_function(resources: dict[str, Any]) -> None:
    queue = resources["DeliveryQueue"]["Properties"]
    timeout = resources["DeliveryFunction"]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * timeout
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["DeliveryDeadLetterQueue", "Arn"]
    }
    for name in ("DeliveryQueue", "DeliveryDeadLetterQueue"):
        assert resources[name]["Properties"]["SqsManagedSseEnabled"] is True
        assert resources[name]["Properties"]["MessageRetentionPeriod"] > 0
    dlq = resources["DeliveryDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == 1209600


def test_queued_messages_outlive_the_stack(resources: dict[str, Any]) -> None:
    # Deleting or replacing the stack must not delete messages accepted but not yet sent, or
    # dead letters an operator has not looked at yet.
    for name in ("DeliveryQueue", "DeliveryDeadLetterQueue"):
        assert resources[name]["DeletionPolicy"] == "Retain"
        assert resources[name]["UpdateReplacePolicy"] == "Retain"


def test_a_parked_message_always_fits_the_dead_letter_queue(resources: dict[str, Any]) -> None:
    from relay.intake import MAX_BODY_BYTES
    from relay.queues import MAX_ATTRIBUTES, MAX_ERROR_MESSAGE

    # SQS counts attributes against the size limit. A delivery message at its limit (its own
    # attributes included) gains the reason: at most ten more attributes, each a name, a type
    # and a value no longer than the error message (or a 255-character key), each character
    # at most six bytes (a ``\uXXXX`` escape of one SQS refuses).
    queue = resources["DeliveryQueue"]["Properties"]["MaximumMessageSize"]
    dlq = resources["DeliveryDeadLetterQueue"]["Properties"]["MaximumMessageSize"]
    reason = MAX_ATTRIBUTES * (256 + len("String") + 6 * MAX_ERROR_MESSAGE)
    assert queue + reason <= dlq <= 1048576  # SQS's largest
    assert queue >= 2 * MAX_BODY_BYTES  # a webhook body and the attributes it is queued with


def test_idempotency_table(resources: dict[str, Any]) -> None:
    table = resources["IdempotencyTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}


def test_a_delivery_is_remembered_as_long_as_its_dead_letter_can_be_redriven(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    # Else a delivered message redriven late is sent again (the DLQ tool's --key-ttl default).
    ttl = template["Parameters"]["IdempotencyTtlSeconds"]["Default"]
    assert ttl >= resources["DeliveryDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["IDEMPOTENCY_TTL_SECONDS"] == {"Ref": "IdempotencyTtlSeconds"}


def test_no_api_gateway_authorizer(resources: dict[str, Any], function: dict[str, Any]) -> None:
    api = resources["HttpApi"]
    assert api["Type"] == "AWS::Serverless::HttpApi"
    assert "Auth" not in api["Properties"]
    assert "StageName" not in api["Properties"]  # $default stage
    (event,) = function["Events"].values()
    assert "Auth" not in event["Properties"]


def test_api_throttling_and_access_logs(resources: dict[str, Any]) -> None:
    props = resources["HttpApi"]["Properties"]
    throttling = props["DefaultRouteSettings"]
    assert throttling["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    assert throttling["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    access = props["AccessLogSettings"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["HttpApiAccessLogGroup", "Arn"]}
    fmt = json.loads(access["Format"])  # one JSON object per request
    for key in ("requestId", "routeKey", "status", "integrationError", "responseLatency"):
        assert key in fmt
    rendered = access["Format"]
    assert "requestBody" not in rendered
    assert "querystring" not in rendered.lower()


def test_log_groups_have_retention(resources: dict[str, Any], function: dict[str, Any]) -> None:
    assert function["LoggingConfig"]["LogGroup"] == {"Ref": "WebhookFunctionLogGroup"}
    delivery = resources["DeliveryFunction"]["Properties"]
    assert delivery["LoggingConfig"]["LogGroup"] == {"Ref": "DeliveryFunctionLogGroup"}
    for name in ("WebhookFunctionLogGroup", "DeliveryFunctionLogGroup", "HttpApiAccessLogGroup"):
        group = resources[name]
        assert group["Type"] == "AWS::Logs::LogGroup"
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionInDays"}


def test_log_retention_parameter(template: dict[str, Any]) -> None:
    param = template["Parameters"]["LogRetentionInDays"]
    assert param["Default"] == 30
    assert 30 in param["AllowedValues"]


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert set(outputs) >= {
        "ApiUrl",
        "MessagesEndpoint",
        "WebhookFunctionArn",
        "WebhookFunctionName",
        "ProviderTokensSecretArn",
        "RelayAuthSecretArn",
        "RelayLayerArn",
        "DeliveryQueueUrl",
        "DeliveryQueueName",
        "DeliveryQueueArn",
        "DeadLetterQueueUrl",
        "DeliveryFunctionArn",
        "IdempotencyTableName",
    }
    assert outputs["MessagesEndpoint"]["Value"]["Fn::Sub"].endswith("/v1/messages")
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].startswith("https://${HttpApi}.execute-api.")


def _sam() -> str | None:
    candidate = Path(sys.executable).parent / "sam"
    if candidate.exists():
        return str(candidate)
    return None


def test_sam_validate_lint() -> None:
    sam = _sam()
    if sam is None:
        pytest.skip(f"sam not found next to {sys.executable} (run `make setup`)")
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    result = subprocess.run(
        [sam, "validate", "--lint", "--region", "us-east-1", "--template", str(TEMPLATE)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "is a valid SAM Template" in output
    assert re.search(r"\b[WE]\d{4}\b", output) is None, output


ALARMS = {
    "DeadLetterQueueNotEmptyAlarm",
    "FailureRateAlarm",
    "LancepilotUnavailableAlarm",
    "FluentsUnavailableAlarm",
    "LancepilotLatencyAlarm",
    "FluentsLatencyAlarm",
    "WebhookFunctionErrorsAlarm",
    "WebhookFunctionThrottlesAlarm",
    "DeliveryFunctionErrorsAlarm",
    "DeliveryFunctionThrottlesAlarm",
}
RELAY_METRICS = {
    "MessagesDelivered",
    "MessagesFailed",
    "MessagesRetried",
    "MessagesQueued",
    "DeliveryLatency",
    "ProviderErrors",
    "RequestsRefused",
    "DuplicatesSuppressed",
    "AmbiguousSends",
}


def test_every_alarm_notifies_the_topic(resources: dict[str, Any]) -> None:
    alarms = {k for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms == ALARMS
    for name in alarms:
        props = resources[name]["Properties"]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        assert "docs/metrics.md#" in props["AlarmDescription"], name
        # Quiet metrics are fine, except the DLQ's: SQS stops reporting an idle queue.
        expected = "ignore" if name == "DeadLetterQueueNotEmptyAlarm" else "notBreaching"
        assert props["TreatMissingData"] == expected, name
    # CloudWatch cannot publish to a topic under the AWS-managed SNS key.
    assert "KmsMasterKeyId" not in resources["AlarmTopic"]["Properties"]
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}


def _metric_names(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["MetricName"]} if "MetricName" in node else set()
        for value in node.values():
            found |= _metric_names(value)
        return found
    if isinstance(node, list):
        return set().union(*(_metric_names(v) for v in node)) if node else set()
    return set()


def test_alarms_watch_the_metrics_the_relay_publishes(resources: dict[str, Any]) -> None:
    watched = set().union(*(_metric_names(resources[a]["Properties"]) for a in ALARMS))
    relay_side = watched & RELAY_METRICS
    assert relay_side == {
        "MessagesFailed",
        "MessagesDelivered",
        "ProviderErrors",
        "DeliveryLatency",
    }
    dlq = resources["DeadLetterQueueNotEmptyAlarm"]["Properties"]
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["DeliveryDeadLetterQueue", "QueueName"]}


def test_metrics_namespace_is_one_parameter(template: dict[str, Any]) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert template["Parameters"]["MetricsNamespace"]["Default"] == "WebhookRelay"


def test_dashboard_is_valid_json_showing_every_metric(resources: dict[str, Any]) -> None:
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    rendered = re.sub(r"\$\{[^}]+\}", "x", body)  # what CloudFormation substitutes
    widgets = json.loads(rendered)["widgets"]
    text = json.dumps(widgets)
    for name in RELAY_METRICS | {
        "ApproximateNumberOfMessagesVisible",
        "ApproximateAgeOfOldestMessage",
        "Errors",
        "Duration",
    }:
        assert name in text, name
    [alarm_widget] = [w for w in widgets if w["type"] == "alarm"]
    assert len(alarm_widget["properties"]["alarms"]) == len(ALARMS)
    for name in ALARMS:
        assert "${" + name + ".Arn}" in body


# --- Security: least privilege and explained checkov suppressions (docs/security.md) ----------

FUNCTIONS = ("WebhookFunction", "DeliveryFunction")
PSEUDO_PARAMETERS = {"AWS::Partition", "AWS::Region", "AWS::AccountId", "AWS::URLSuffix"}


def _names_a_resource(value: Any, resources: dict[str, Any]) -> bool:
    """A Ref or GetAtt of a resource this template declares (not a parameter, not "*")."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    ((key, target),) = value.items()
    if key == "Ref":
        return target in resources
    if key == "Fn::GetAtt":
        return target[0] in resources
    return False


def _scoped_arn(value: Any, resources: dict[str, Any]) -> bool:
    """A named resource, or an Fn::Sub ARN built only from named resources and pseudo params."""
    if _names_a_resource(value, resources):
        return True
    if not (isinstance(value, dict) and set(value) == {"Fn::Sub"}):
        return False
    sub = value["Fn::Sub"]
    text, variables = (sub, {}) if isinstance(sub, str) else sub
    placeholders = set(re.findall(r"\$\{([^}!]+)\}", text))
    named = set()
    for placeholder in placeholders:
        if placeholder in variables:
            if _names_a_resource(variables[placeholder], resources):
                named.add(placeholder)
        elif placeholder.split(".")[0] in resources:  # ${Queue.Arn}, ${Table}
            named.add(placeholder)
    # A wildcard only below a named resource, like a DynamoDB table's "table/<name>/index/*".
    wildcard_ok = "*" not in text or re.search(r"\}/[a-z]+/\*$", text) is not None
    return bool(named) and placeholders <= named | PSEUDO_PARAMETERS and wildcard_ok


def _statements(policy_document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy_document["Statement"]
    return [statements] if isinstance(statements, dict) else statements


def _assert_statement_scoped(
    statement: dict[str, Any], resources: dict[str, Any], where: str
) -> None:
    assert statement["Effect"] == "Allow", where
    assert "NotResource" not in statement, where
    assert "NotAction" not in statement, where
    targets = statement["Resource"]
    if targets == "*":
        actions = statement["Action"]
        assert sorted([actions] if isinstance(actions, str) else actions) == sorted(XRAY_ACTIONS)
        return
    for target in targets if isinstance(targets, list) else [targets]:
        assert _scoped_arn(target, resources), f"{where}: {target!r} is not a named resource"


def test_every_iam_statement_in_the_template_names_its_resources(
    resources: dict[str, Any],
) -> None:
    functions = {k for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    assert functions == set(FUNCTIONS)  # a new function gets its role reviewed here
    for name in FUNCTIONS:
        # SAM would generate a role from Policies and attach managed policies on "*" to it.
        assert "Policies" not in resources[name]["Properties"], name
    iam = {"AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}
    assert {k for k, v in resources.items() if v["Type"] in iam} == set(ROLES.values())
    for name in ROLES.values():
        for policy in resources[name]["Properties"]["Policies"]:
            for statement in _statements(policy["PolicyDocument"]):
                _assert_statement_scoped(statement, resources, f"{name}.{policy['PolicyName']}")


def _sam_transform() -> dict[str, Any]:
    """template.yaml as CloudFormation sees it after the SAM transform, offline."""
    transform = pytest.importorskip("samtranslator.translator.transform").transform
    document = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)
    document["Resources"]["RelayLayer"]["Properties"]["ContentUri"] = "s3://bucket/layer.zip"
    for name in FUNCTIONS:  # what `sam build` and `sam package` put there
        document["Resources"][name]["Properties"]["CodeUri"] = f"s3://bucket/{name}.zip"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        output: dict[str, Any] = transform(document, {}, NoManagedPolicies())
    return output


def test_the_sam_transform_adds_no_role_and_no_managed_policy(
    resources: dict[str, Any],
) -> None:
    generated = _sam_transform()["Resources"]
    roles = {k: v for k, v in generated.items() if v["Type"] == "AWS::IAM::Role"}
    assert set(roles) == set(ROLES.values())  # ours, untouched: SAM added none of its own
    for name, role in roles.items():
        assert "ManagedPolicyArns" not in role["Properties"], name
        assert role == resources[name], name
    for name in FUNCTIONS:
        assert generated[name]["Properties"]["Role"] == _arn(ROLES[name])


CHECKOV_ID = re.compile(r"^CKV2?_AWS_\d+$")


def _checkov_skips(resources: dict[str, Any]) -> list[tuple[str, str, Any]]:
    skips = []
    for name, resource in resources.items():
        metadata = resource.get("Metadata", {})
        assert "bridgecrew" not in metadata, name  # checkov's other spelling: keep one
        for skip in metadata.get("checkov", {}).get("skip", []):
            skips.append((name, skip.get("id"), skip.get("comment")))
    return skips


def test_every_checkov_suppression_carries_a_reason(resources: dict[str, Any]) -> None:
    skips = _checkov_skips(resources)
    assert skips, "no suppressions found: has the Metadata layout changed?"
    for name, check, comment in skips:
        assert isinstance(check, str), f"{name}: {check!r}"
        assert CHECKOV_ID.match(check), f"{name}: {check!r}"
        assert isinstance(comment, str), f"{name} {check}: no comment"
        assert len(comment.split()) >= 8, f"{name} {check}: say why, not just that ({comment!r})"
    assert len(skips) == len({(n, c) for n, c, _ in skips}), "a check is skipped twice"
    # Nowhere else to hide one: not as a YAML comment, not in the config file.
    assert "checkov:skip" not in TEMPLATE.read_text().replace(" ", "")
    config = yaml.safe_load((REPO_ROOT / ".checkov.yaml").read_text())
    assert not {"skip-check", "skip-path", "soft-fail-on", "skip-framework"} & set(config)
    assert config.get("soft-fail", False) is False


def test_every_checkov_suppression_is_documented(resources: dict[str, Any]) -> None:
    rows = [
        line
        for line in (REPO_ROOT / "docs/security.md").read_text().splitlines()
        if line.startswith("| CKV")
    ]
    documented = {
        (name, check)
        for row in rows
        for check in re.findall(r"CKV2?_AWS_\d+", row.split("|")[1])
        for name in re.findall(r"`(\w+)`", row.split("|")[2])
    }
    assert documented == {(name, check) for name, check, _ in _checkov_skips(resources)}
