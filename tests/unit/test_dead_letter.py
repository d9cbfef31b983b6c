"""Which dead letters the relay tool takes as possibly delivered; what it redrives them with."""

from __future__ import annotations

from typing import Any

import pytest

from relay_ops.dlq import DeadLetter


def letter(**attributes: str) -> DeadLetter:
    """A dead letter as ReceiveMessage gives it, with these string attributes."""
    return DeadLetter.from_sqs(
        {
            "MessageId": "m-1",
            "ReceiptHandle": "h-1",
            "Body": "{}",
            "MessageAttributes": {
                name: {"DataType": "String", "StringValue": value}
                for name, value in attributes.items()
            },
        }
    )


@pytest.mark.parametrize(
    ("attributes", "possibly"),
    [
        ({"ErrorKind": "permanent", "RelayId": "r-1"}, False),
        ({"ErrorKind": "exhausted", "PossiblyDelivered": "true"}, True),
        ({"ErrorKind": "exhausted", "PossiblyDelivered": "false"}, False),
        # Moved by the queue's redrive policy: an invocation ended without an outcome, maybe
        # mid-send, and nothing says whether the provider has it.
        ({}, True),
        ({"RelayId": "r-1", "IdempotencyKey": "k-1"}, True),
        ({"ErrorKind": " "}, True),
    ],
)
def test_possibly_delivered(attributes: dict[str, str], possibly: bool) -> None:
    assert letter(**attributes).possibly_delivered is possibly


def strings(attributes: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in attributes.items()}


def test_a_letter_with_no_reason_is_redriven_flagged_where_it_fits() -> None:
    # Parked again after the redrive, it must still say the provider may have it.
    assert strings(letter().redrive_attributes()) == {"RelayId": "m-1", "PossiblyDelivered": "true"}
    # The RelayId it is recognised by comes first: with nine attributes, only it fits.
    nine = {f"Producer{i}": str(i) for i in range(9)}
    assert strings(letter(**nine).redrive_attributes()) == {**nine, "RelayId": "m-1"}
    # A letter the relay parked keeps only what it had, its reason dropped.
    parked = letter(ErrorKind="permanent", ErrorStatus="422", RelayId="r-1")
    assert strings(parked.redrive_attributes()) == {"RelayId": "r-1"}
