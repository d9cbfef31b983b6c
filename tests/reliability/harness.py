"""Fault injection at volume: the whole local stack, seeded provider faults, every message traced.

    python -m tests.reliability.harness --messages 2000 --seed 7 \
        --json docs/runs/reliability-2000-seed7-<commit>.json         # make reliability
    python -m tests.reliability.harness --messages 50000 --seed 7 ...  # make soak
    python -m tests.reliability.harness --messages 150 --allow-untried-paths   # a quick look

Messages go in through both entry points (SQS producers; the webhook, queued and synchronous)
while the sandbox providers answer with faults. Each message's plan (its entry point, provider,
whether it is broken, and the fault met by each of its provider requests in turn) is derived
from the seed and the message's index before anything is sent, so a seed reproduces the same
plan whatever the threads do. Each message carries a tag in its text, so the sandbox can pick
a request's fault from its message's plan before the relay has said the message's id.

Deliveries are counted by relay id, at the stand-ins: every provider request carries
``X-Relay-Id``, and the harness learns each message's relay id from what the relay gives out
(the webhook's ``id``; for a producer's message, its SQS message id, which the relay takes as
its relay id), then checks that each request and each dead letter (``RelayId``) under that id
holds that message. A request without the header, or under an id given to no message (or to
another message), fails the run.

At the end every message must be in exactly one state: delivered (one request kept under its
relay id, or more only after a request under that id whose answer never came back),
dead-lettered with a reason that matches the faults it met, or refused to its synchronous
caller with the provider's refusal. A synchronous send that goes unanswered is held: parked
as ``exhausted`` (PossiblyDelivered, QueuedBy webhook, the RelayId and key its caller was
given), its caller told 504 ``"status": "held"``, and never sent again; held without a dead
letter, or sent again, fails the run. A message parked after an ambiguous send (the provider
may have kept it) is counted apart, as possibly delivered. Duplicates are counted by entry
point and by cause (``Report.duplicates_by``): an SQS redelivery after an ambiguous send; a
synchronous caller's retry may cause none, as its unanswered send is held, not resent.

The run then passes ``Report.problems`` (the one check ``test_volume.py`` and this command
line share): no failure of any kind, exactly one end state per message, duplicates no more
than the ambiguous sends and those no more than the requests left unanswered, every
duplicate matched to a retry or a redelivery and none on the synchronous path, and
everything the seeded plan guarantees (each message's first planned fault met; the messages
planned to be parked, refused, exhausted or held ended so); and, unless
``--allow-untried-paths`` (for small runs), every fault kind, entry point and way to the
dead-letter queue (a held synchronous send among them) met at least once. A problem exits
non-zero.

The tables printed are the ones docs/reliability.md quotes; the raw counts go to a JSON file
(``--json``, which ``make reliability`` and ``make soak`` give as
``docs/runs/<run>-<commit>.json``; else ``$RELIABILITY_REPORT_JSON``, else the temp directory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import boto3
import urllib3

from relay.queue_worker import MAX_VISIBILITY
from relay.secrets import FAST_FAIL
from relay_local.checkout import revision
from relay_local.lambda_runtime import REPO
from relay_local.sandbox import Fault, Received
from relay_local.stack import DEV_API_KEY, DevStack

if TYPE_CHECKING:
    from collections.abc import Mapping

TAG = re.compile(r"rel-\d{7}")
PROVIDERS = ("lancepilot", "fluents")
# How long a caller keeps retrying a 409 (the key in progress elsewhere): past the webhook's
# 28 s timeout (template.yaml), when any invocation holding the key has ended.
IN_PROGRESS_PATIENCE_S = 40.0
ENTRIES = {"sqs": 40, "http async": 30, "http sync": 30}  # entry point -> share of messages
BROKEN_SHARE = 0.02  # SQS producers' messages without "to": parked as invalid, never sent
# Queued messages whose every provider request meets a retryable fault: they must end as
# `exhausted` once the queue's receives run out. Each costs up to 4 attempts x 5 receives.
EXHAUST_SHARE = 0.015
# Of those, the share that also meets one ambiguous fault: it must then be parked as exhausted
# with PossiblyDelivered (without some, that path would go untried: 0 by construction).
AMBIGUOUS_EXHAUST_SHARE = 1 / 3
REPORT_ENV = "RELIABILITY_REPORT_JSON"
# What a run measured, for its report's commit and dirty flag: the code the stack runs (the
# layer, the functions, the local stack, the template its resources and settings come from) and
# the tests that drive and judge it.
CODE_PATHS = (
    "template.yaml",
    "layers",
    "functions",
    "local",
    "ops",
    "tests",
    "pyproject.toml",
    "Makefile",
)

# --- the fault catalogue ------------------------------------------------------------------------

Effect = Literal["accepted", "retryable", "ambiguous", "permanent"]


@dataclass(frozen=True)
class Kind:
    """One kind of provider answer: its row in the table, its share, what it means."""

    label: str  # the row in docs/reliability.md's "what was tried" table
    weight: float  # share of provider requests (per request, for an ordinary message)
    effect: Effect  # what the relay should take it to mean
    faults: dict[str, tuple[Fault | None, ...]]  # provider -> variants (None = normal answer)
    status: bool = False  # answered with an HTTP status the relay sees (ErrorStatus applies)


def _per_provider(build: Any) -> dict[str, tuple[Fault | None, ...]]:
    return {provider: tuple(build(provider)) for provider in PROVIDERS}


def _server_error(provider: str, code: int) -> dict[str, Any]:
    """A 5xx's body as each provider's framework writes it (neither document describes one)."""
    if provider == "lancepilot":  # Laravel
        return {"message": "Server Error" if code == 500 else _phrase(code)}
    message = "Internal server error" if code == 500 else _phrase(code)  # NestJS
    return {"statusCode": code, "message": message}


def _phrase(code: int) -> str:
    return HTTPStatus(code).phrase


def _gateway_page(code: int) -> Fault:
    title = f"{code} {_phrase(code)}"
    page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1><hr>nginx</body></html>"
    return Fault.garbage_body(code, page.encode())


REFUSAL = {  # each provider's documented refusal of a message
    "lancepilot": (
        422,
        {"message": "Validation error", "errors": {"number": ["is not on WhatsApp"]}},
    ),
    "fluents": (
        400,
        {"message": "to_number is invalid", "error": "Bad Request", "statusCode": 400},
    ),
}
CREATED = {  # what a success body looks like (Fluents documents none; this is a plausible one)
    "lancepilot": {
        "status": 201,
        "message": "Resource created successfully.",
        "data": {"id": "9b1f7c7e-3c1a-4a8e-9d55-0c2b9f0e6a11"},
    },
    "fluents": {"id": "msg_01HZX8", "status": "queued"},
}

CATALOGUE: dict[str, Kind] = {
    "ok": Kind(
        "provider requests answered normally", 70, "accepted", _per_provider(lambda p: [None])
    ),
    "slow": Kind("slow answer", 5, "accepted", _per_provider(lambda p: [Fault.slow(0.1)])),
    **{
        f"{code}": Kind(
            f"{code} with the provider's error body",
            1,
            "retryable",
            _per_provider(lambda p, code=code: [Fault.status(code, _server_error(p, code))]),
            status=True,
        )
        for code in (500, 502, 503, 504)
    },
    "5xx malformed": Kind(
        "5xx with a malformed body (gateway HTML page, truncated JSON, empty JSON)",
        1,
        "retryable",
        _per_provider(
            lambda p: [
                _gateway_page(502),
                _gateway_page(504),
                Fault.truncated_json(503, _server_error(p, 503)),
                Fault.status(500, b"", headers={"Content-Type": "application/json"}),
            ]
        ),
        status=True,
    ),
    "429": Kind(
        "429 with `Retry-After: 1`",
        2,
        "retryable",
        _per_provider(lambda p: [Fault.status(429, {"message": "Too Many Attempts."}, "1")]),
        status=True,
    ),
    "429 date": Kind(
        "429 with `Retry-After` as an HTTP date (1 s ahead)",
        1,
        "retryable",
        _per_provider(
            lambda p: [Fault.status(429, {"message": "Too Many Attempts."}, retry_after_date_in=1)]
        ),
        status=True,
    ),
    "reset before read": Kind(
        "connection reset before the request is read",
        3,
        "retryable",
        _per_provider(lambda p: [Fault.reset_before_read()]),
    ),
    "reset after read": Kind(
        "connection reset after the request is read (ambiguous)",
        2,
        "ambiguous",
        _per_provider(lambda p: [Fault.reset_after_read()]),
    ),
    "hang": Kind(
        "hang past the read timeout (ambiguous)",
        2,
        "ambiguous",
        _per_provider(lambda p: [Fault.hang(1.2)]),
    ),
    "2xx html": Kind(
        "malformed (non-JSON) success body",
        1,
        "accepted",
        _per_provider(lambda p: [Fault.garbage_body()]),
    ),
    "2xx truncated": Kind(
        "success body of truncated JSON",
        1,
        "accepted",
        _per_provider(lambda p: [Fault.truncated_json(201, CREATED[p])]),
    ),
    "2xx wrong shape": Kind(
        "success body of JSON of the wrong shape (a list, a string, `data` not an object)",
        1,
        "accepted",
        _per_provider(
            lambda p: [
                Fault.status(200, [CREATED[p]]),
                Fault.status(201, "created"),
                Fault.status(201, {"status": "ok", "data": ["not", "an", "object"]}),
            ]
        ),
    ),
    "4xx": Kind(
        "permanent 4xx (Lancepilot 422, Fluents 400)",
        1.5,
        "permanent",
        _per_provider(lambda p: [Fault.status(*REFUSAL[p])]),
        status=True,
    ),
    "4xx malformed": Kind(
        "permanent 4xx with a malformed body (HTML 403, truncated JSON, plain text)",
        0.5,
        "permanent",
        _per_provider(
            lambda p: [
                _gateway_page(403),
                Fault.truncated_json(*REFUSAL[p]),
                Fault.garbage_body(REFUSAL[p][0], b"Bad Request", "text/plain; charset=utf-8"),
            ]
        ),
        status=True,
    ),
}
# What a message planned to be exhausted meets on every request: retryable faults only, and
# quick ones (no Retry-After waits), so that its receives do not hold up their batches; and, for
# some, one ambiguous fault (AMBIGUOUS_EXHAUST_SHARE).
EXHAUSTING = ("500", "502", "503", "504", "5xx malformed", "reset before read")
AMBIGUOUS = ("reset after read", "hang")
PLANNED_ATTEMPTS = 12  # an ordinary message's plan; later requests (if any) are answered normally
# Requests the relay sees go unanswered: the ambiguous ones, and a reset before the request was
# read, which the relay cannot tell from a reset after it, though the provider never has it.
UNANSWERED = frozenset({"hang", "reset after read", "reset before read"})
# A synchronous send that meets one of those is held (relay.service): parked as `exhausted` with
# PossiblyDelivered and QueuedBy webhook, its caller told 504 "status": "held"; its dead letter's
# ErrorMessage ends so (docs/sqs.md, "Held synchronous sends").
HELD = "held"
HELD_DETAIL = "a synchronous request, answered 504 and not resent"
# The attempts botocore makes at one dead-letter send (relay.queues): each may be stored.
PARKING_ATTEMPTS: int = FAST_FAIL.retries["total_max_attempts"]

# Fast settings, so that thousands of messages and their faults fit in a minute or two.
SPEED = {
    "HTTP_CONNECT_TIMEOUT": "0.5",
    # Wide against the slow answers (0.1 s): a normal answer must not time out on a busy machine.
    "HTTP_READ_TIMEOUT": "1.0",
    "SEND_BUDGET_SECONDS": "5",
    "BACKOFF_BASE_SECONDS": "0.01",
    "BACKOFF_MAX_SECONDS": "0.05",
    "REDELIVERY_BASE_SECONDS": "1",
    "REDELIVERY_MAX_SECONDS": "2",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_METRICS_DISABLED": "true",  # thousands of EMF lines would only be noise here
}
BACKLOG_LIMIT = 400  # messages waiting in the delivery queue before producers hold back

# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One message and the faults its provider requests meet, in order."""

    index: int
    tag: str
    entry: str  # "sqs", "http async" or "http sync"
    provider: str
    body: dict[str, Any]
    broken: bool  # no "to": must be parked as invalid without a send
    exhausting: bool  # every request meets a retryable fault (one may be ambiguous): exhausted
    attempts: tuple[tuple[str, int], ...]  # (catalogue key, variant) per provider request

    def fault(self, attempt: int) -> tuple[str, Fault | None]:
        """The catalogue key and the fault for this message's ``attempt``-th request (from 0)."""
        if attempt < len(self.attempts):
            key, variant = self.attempts[attempt]
        elif self.exhausting:
            key, variant = self.attempts[attempt % len(self.attempts)]
        else:
            key, variant = "ok", 0
        return key, CATALOGUE[key].faults[self.provider][variant]


def plan(messages: int, seed: int, max_receive_count: int = 5) -> list[Planned]:
    """Every message's plan, from ``seed`` and its index alone (not from timing)."""
    return [_plan_one(i, seed, max_receive_count) for i in range(messages)]


def _plan_one(index: int, seed: int, max_receive_count: int) -> Planned:
    rng = random.Random(f"webhook-relay/{seed}/{index}")  # str seeds hash the same in every run
    tag = f"rel-{index:07d}"
    entry = rng.choices(list(ENTRIES), list(ENTRIES.values()))[0]
    provider = rng.choice(PROVIDERS)
    body: dict[str, Any] = {
        "provider": provider,
        "to": "+14155550123",
        "text": f"Order {tag} has shipped",
    }
    broken = entry == "sqs" and rng.random() < BROKEN_SHARE
    if broken:
        body.pop("to")
    exhausting = not broken and entry != "http sync" and rng.random() < EXHAUST_SHARE

    def draw(keys: tuple[str, ...] | list[str]) -> tuple[str, int]:
        key = rng.choices(keys, [CATALOGUE[k].weight for k in keys])[0]
        return key, rng.randrange(len(CATALOGUE[key].faults[provider]))

    attempts: list[tuple[str, int]] = []
    if exhausting:  # four attempts a receive at most, and the queue's receives
        attempts = [draw(EXHAUSTING) for _ in range(4 * max_receive_count)]
        if rng.random() < AMBIGUOUS_EXHAUST_SHARE:
            # Among the first requests, one per receive at least, so that it is met; an
            # ambiguous send ends its receive (the relay never resends within a send).
            attempts[rng.randrange(max_receive_count)] = draw(AMBIGUOUS)
    elif not broken:
        keys = list(CATALOGUE)
        while len(attempts) < PLANNED_ATTEMPTS:
            attempts.append(draw(keys))
            if CATALOGUE[attempts[-1][0]].effect in ("accepted", "permanent"):
                break  # the message's last request, if the relay is right
    return Planned(index, tag, entry, provider, body, broken, exhausting, tuple(attempts))


def expectations(planned: list[Planned]) -> dict[str, int]:
    """What the plan alone guarantees, as lower bounds, whatever its size: ``fault:<key>``,
    requests served that fault; ``state:<STATES key>``, messages ending so.

    Every valid message's first request meets its first planned fault. So a first answer that
    is accepted delivers it once; a first refusal parks it as permanent (refused, when
    synchronous); a synchronous message whose first request goes unanswered is held (parked as
    exhausted; ambiguous unless it was a reset before the read, which the stand-ins do not
    record; ``held:synchronous`` counts them all); and a message planned to exhaust its
    receives is parked as exhausted, with PossiblyDelivered if its plan holds an ambiguous
    fault (one among its first requests, so met). Broken messages are checked exactly (parked
    as invalid, Report.problems).
    """
    least: Counter[str] = Counter()
    for item in planned:
        if item.broken:
            continue
        first = item.attempts[0][0]
        least[f"fault:{first}"] += 1
        if item.exhausting:
            met = any(key in AMBIGUOUS for key, _ in item.attempts)
            least["state:ambiguous parked exhausted" if met else "state:parked exhausted"] += 1
        elif item.entry == "http sync" and first in UNANSWERED:
            least["held:synchronous"] += 1
            maybe = "ambiguous " if CATALOGUE[first].effect == "ambiguous" else ""
            least[f"state:{maybe}parked exhausted"] += 1
        elif CATALOGUE[first].effect == "accepted":
            least["state:delivered once"] += 1
        elif CATALOGUE[first].effect == "permanent":
            least["state:refused" if item.entry == "http sync" else "state:parked permanent"] += 1
    return dict(least)


# --- the report ----------------------------------------------------------------------------------

ENTRY_LABELS = {
    "sqs": "messages via SQS producers",
    "http async": "messages via the webhook, queued (`Prefer: respond-async`)",
    "http sync": "messages via the webhook, synchronous",
}
STATES = {  # end state -> its row in docs/reliability.md's "what happened" table
    "delivered once": "delivered once",
    "delivered again": "delivered, plus resends after an ambiguous send",
    "parked invalid": "dead-lettered with its reason: `invalid` (broken producer messages)",
    "parked permanent": "dead-lettered with its reason: `permanent` (provider refused)",
    "parked exhausted": (
        "dead-lettered with its reason: `exhausted` (retryable faults until the last receive; "
        "or a synchronous send held after a reset before the request was read)"
    ),
    "ambiguous parked permanent": (
        "dead-lettered as `permanent` after an ambiguous send (possibly delivered)"
    ),
    "ambiguous parked exhausted": (
        "dead-lettered as `exhausted` after an ambiguous send (possibly delivered; "
        "a synchronous one held, its caller told 504 `held`)"
    ),
    # Never after an ambiguous send: a synchronous send that goes unanswered is held, not sent
    # again, so a refusal after one is a failure (judge).
    "refused": "refused to the synchronous caller with the provider's reason (502 after its 4xx)",
}
FAILURES = {  # failure list -> its row; every one must be empty
    "lost": "**lost**",
    "bad_dead_letters": (
        "dead letters without their reason, or with one that does not match the faults met"
    ),
    "failed_though_accepted": "parked or refused although the provider's 2xx answer arrived",
    "wrong_answers": "callers told something other than what happened",
    "unexplained_duplicates": "duplicates not explained by an ambiguous send",
    "untraced": (
        "provider requests not traced to their message by `X-Relay-Id` "
        "(no header, or an id given to no message or to another one)"
    ),
    "queue_glitches": (
        "messages the local queue handed to two pollers at once, or again after their delete"
    ),
    "violations": "requests that broke a provider's OpenAPI document",
}
# Why a duplicate was sent: each copy beyond the first went out on a later occasion to send the
# message (the relay ends a send at its first unanswered request and never resends within it).
CAUSES = {
    # Must stay 0: a synchronous send that goes unanswered is held, and its key answers every
    # retry with the same 504 without a send (judge, Report.problems). A column of zeros, kept
    # to show it.
    "caller retry": "a caller's retry (same key) after an ambiguous answer",
    "redelivery": "an SQS redelivery after an ambiguous send",
    # More copies than the caller's tries plus the queue's receives of the message: a resend
    # within one invocation, which the relay never makes. Must stay 0 (Report.problems).
    "unattributed": "neither (more copies than the caller's tries and the queue's receives)",
}
ENTRY_SHORT = {
    "sqs": "SQS producers",
    "http async": "webhook, queued",
    "http sync": "webhook, synchronous",
}


@dataclass
class Report:
    messages: int
    seed: int
    entry: Counter[str] = field(default_factory=Counter)
    broken: int = 0
    exhausting: int = 0
    faults: Counter[str] = field(default_factory=Counter)  # catalogue key -> requests served
    states: Counter[str] = field(default_factory=Counter)  # STATES key -> messages
    dead_letter_kinds: Counter[str] = field(default_factory=Counter)
    held: int = 0  # synchronous messages held: parked, their callers told 504 "held"
    ambiguous: int = 0  # messages with a request the provider may have kept, answer unseen
    ambiguous_sends: int = 0  # such requests, before the first 2xx of their relay id
    duplicates: int = 0  # requests beyond the first that the provider may have kept
    # Dead letters beyond a message's first, each the same as its first (judge): a dead-letter
    # send answered late and retried, both stored; per entry point.
    copies: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0  # requests the stand-ins read and never answered: all the ambiguous ones
    lost: list[str] = field(default_factory=list)
    bad_dead_letters: list[str] = field(default_factory=list)
    failed_though_accepted: list[str] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)
    unexplained_duplicates: list[str] = field(default_factory=list)
    untraced: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # requests that broke a provider spec
    queue_glitches: list[str] = field(default_factory=list)  # moto's, see _QueueWatch
    queue_calls: dict[str, int] = field(default_factory=dict)  # the pollers' SQS calls
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds each: start, send, ...
    # Where the duplicates come from: entry point -> CAUSES key -> requests; and, per entry
    # point, the messages with an ambiguous send and those sends (the duplicates' occasions).
    duplicates_by: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    ambiguous_by_entry: Counter[str] = field(default_factory=Counter)
    ambiguous_sends_by_entry: Counter[str] = field(default_factory=Counter)
    # What the seeded plan alone guarantees, as lower bounds (``expectations``): "fault:<key>"
    # (requests served that fault), "state:<STATES key>" (messages ending so) and
    # "held:synchronous" (synchronous messages held).
    expected: dict[str, int] = field(default_factory=dict)

    def failures(self) -> dict[str, list[str]]:
        return {name: getattr(self, name) for name in FAILURES}

    def failed(self) -> bool:
        return any(self.failures().values())

    def duplicates_by_cause(self) -> Counter[str]:
        return sum(self.duplicates_by.values(), Counter())

    def problems(self, *, every_path: bool = True) -> list[str]:
        """Everything wrong with the run; empty when it passed. The one check of a report, made
        by ``test_volume.py`` and by this module's command line (``make reliability``, ``make
        soak``).

        Always: no failure of any kind (FAILURES); every message in exactly one end state;
        the broken ones, and only they, parked as invalid; duplicates <= ambiguous sends <=
        requests left unanswered, which are exactly the hangs and resets after the read the
        stand-ins served; every duplicate matched to a caller's retry or an SQS redelivery,
        and none of a synchronous message (an unanswered synchronous send is held, never sent
        again); and what the plan guarantees (``expected``). With ``every_path``: every fault
        kind, entry point and way to the dead-letter queue (a held synchronous send among
        them) was met at least once (a run too small for its plan to hold them all fails
        this; ``--allow-untried-paths``).
        """
        found = [
            f"{FAILURES[name].strip('*')}: {len(items)} (e.g. {items[:3]})"
            for name, items in self.failures().items()
            if items
        ]

        def need(ok: bool, what: str) -> None:
            if not ok:
                found.append(what)

        entered, ended = sum(self.entry.values()), sum(self.states.values())
        need(entered == self.messages, f"{entered} messages entered, of {self.messages}")
        need(ended == self.messages, f"{ended} messages in an end state, of {self.messages}")
        need(
            self.states["parked invalid"] == self.broken,
            f"{self.states['parked invalid']} parked as invalid, {self.broken} broken",
        )
        need(
            self.duplicates <= self.ambiguous_sends <= self.unanswered,
            f"not duplicates ({self.duplicates}) <= ambiguous sends ({self.ambiguous_sends}) "
            f"<= unanswered requests ({self.unanswered})",
        )
        served_ambiguous = sum(self.faults[key] for key in AMBIGUOUS)
        need(
            self.unanswered == served_ambiguous,
            f"{self.unanswered} requests unanswered, but {served_ambiguous} hangs and resets "
            "after the read served",
        )
        causes = self.duplicates_by_cause()
        need(
            sum(causes.values()) == self.duplicates,
            f"duplicates by cause {dict(causes)} do not add up to {self.duplicates}",
        )
        need(
            causes["unattributed"] == 0,
            f"{causes['unattributed']} duplicates neither on a caller's retry nor on a "
            "redelivery (a resend within one invocation)",
        )
        synchronous = dict(+self.duplicates_by.get("http sync", Counter()))
        need(
            not synchronous,
            f"duplicates of synchronous messages {synchronous}: an unanswered synchronous send "
            "is held, never sent again",
        )
        for key, least in sorted(self.expected.items()):
            kind, name = key.split(":", 1)
            got = {"fault": self.faults[name], "state": self.states[name], "held": self.held}[kind]
            need(got >= least, f"the plan guarantees at least {least} {key}, got {got}")
        if every_path:
            untried = [key for key in CATALOGUE if not self.faults[key]]
            need(not untried, f"fault kinds never met: {untried}")
            need(set(self.entry) == set(ENTRIES), f"entry points used: {sorted(self.entry)}")
            need(self.broken > 0, "no broken message (the path to `invalid` untried)")
            need(self.exhausting > 0, "no message planned to exhaust its receives")
            need(self.unanswered > 0, "no request went unanswered (no ambiguous send)")
            need(self.held > 0, "no synchronous message held (the path to a held 504 untried)")
            for state in (
                "parked permanent",
                "parked exhausted",
                "ambiguous parked exhausted",
                "refused",
            ):
                need(self.states[state] > 0, f"no message ended {state!r}")
        return found

    def table(self) -> str:
        """The two tables docs/reliability.md quotes, row for row."""
        tried: list[tuple[str, str]] = []
        for key, label in ENTRY_LABELS.items():
            tried.append((label, _n(self.entry[key])))
            if key == "sqs":
                tried.append(
                    ("of which broken (no `to`): to be dead-lettered as `invalid`", _n(self.broken))
                )
        tried.append(
            ("queued messages meeting a retryable fault on every request", _n(self.exhausting))
        )
        tried += [(kind.label, _n(self.faults[key])) for key, kind in CATALOGUE.items()]

        share = (
            f" ({100 * self.duplicates / self.messages:.1f} % of messages)" if self.messages else ""
        )
        happened = [(label, _n(self.states[key])) for key, label in STATES.items()]
        happened.insert(
            list(STATES).index("ambiguous parked exhausted") + 1,
            (
                "of the `exhausted` dead letters, synchronous sends held (their callers told "
                '504 `"status": "held"`, never sent again)',
                _n(self.held),
            ),
        )
        failures = self.failures()
        happened += [
            (FAILURES[name], f"**{_n(len(failures[name]))}**")
            for name in (
                "lost",
                "bad_dead_letters",
                "failed_though_accepted",
                "wrong_answers",
                "untraced",
            )
        ]
        happened += [
            (
                "messages with an ambiguous send (the provider got it, its answer never arrived)",
                f"{_n(self.ambiguous)} ({_n(self.ambiguous_sends)} requests)",
            ),
            (
                "duplicate sends (requests the provider may have kept twice)",
                _n(self.duplicates) + share,
            ),
            (FAILURES["unexplained_duplicates"], f"**{_n(len(self.unexplained_duplicates))}**"),
            (
                "copies of a dead letter (the same letter stored twice: a dead-letter send "
                "answered late and retried; never a provider request)",
                _n(sum(self.copies.values())),
            ),
            (FAILURES["violations"], f"**{_n(len(self.violations))}**"),
            (FAILURES["queue_glitches"], f"**{_n(len(self.queue_glitches))}**"),
            ("time", f"{self.seconds:.0f} s"),
        ]
        tables = [
            "\n".join(
                [f"| {title} | count |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]
            )
            for title, rows in (("what was tried", tried), ("what happened", happened))
        ]
        return "\n\n".join([*tables, self.duplicates_table()])

    def duplicates_table(self) -> str:
        """Where the duplicates come from: a row per entry point, a column per cause."""
        head = [
            "where duplicates come from",
            "messages",
            "messages with an ambiguous send (requests)",
            *(f"duplicates on {label}" for label in CAUSES.values()),
            "duplicates (% of messages)",
        ]
        rows = []
        for entry in [*ENTRY_SHORT, None]:
            if entry is None:
                messages, causes = self.messages, self.duplicates_by_cause()
                ambiguous, sends, label = self.ambiguous, self.ambiguous_sends, "all"
            else:
                messages, causes = self.entry[entry], self.duplicates_by.get(entry, Counter())
                ambiguous = self.ambiguous_by_entry[entry]
                sends, label = self.ambiguous_sends_by_entry[entry], ENTRY_SHORT[entry]
            total = sum(causes.values())
            share = f" ({100 * total / messages:.1f} %)" if messages else ""
            rows.append(
                [
                    label,
                    _n(messages),
                    f"{_n(ambiguous)} ({_n(sends)})",
                    *(_n(causes[cause]) for cause in CAUSES),
                    _n(total) + share,
                ]
            )
        return "\n".join(
            [
                "| " + " | ".join(head) + " |",
                "| --- " * len(head) + "|",
                *("| " + " | ".join(row) + " |" for row in rows),
            ]
        )

    def summary(self) -> str:
        """What failed, a few examples of each."""
        return "; ".join(
            f"{FAILURES[name].strip('*')}: {len(items)} (e.g. {items[:3]})"
            for name, items in self.failures().items()
            if items
        )

    def as_json(self, every_path: bool = True) -> dict[str, Any]:
        return {
            **revision(REPO, *CODE_PATHS),
            "messages": self.messages,
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "entry": dict(self.entry),
            "broken": self.broken,
            "exhausting": self.exhausting,
            "faults": {key: self.faults[key] for key in CATALOGUE},
            "fault_labels": {key: kind.label for key, kind in CATALOGUE.items()},
            "states": {key: self.states[key] for key in STATES},
            "state_labels": STATES,
            "dead_letter_kinds": dict(self.dead_letter_kinds),
            "held_synchronous": self.held,
            "ambiguous_messages": self.ambiguous,
            "ambiguous_sends": self.ambiguous_sends,
            "duplicates": self.duplicates,
            "dead_letter_copies_by_entry": {entry: self.copies[entry] for entry in ENTRIES},
            "duplicates_by_entry": {
                entry: sum(self.duplicates_by.get(entry, Counter()).values()) for entry in ENTRIES
            },
            "duplicates_by_cause": {cause: self.duplicates_by_cause()[cause] for cause in CAUSES},
            "duplicates_by": {
                entry: {cause: self.duplicates_by.get(entry, Counter())[cause] for cause in CAUSES}
                for entry in ENTRIES
            },
            "cause_labels": CAUSES,
            "ambiguous_messages_by_entry": {e: self.ambiguous_by_entry[e] for e in ENTRIES},
            "ambiguous_sends_by_entry": {e: self.ambiguous_sends_by_entry[e] for e in ENTRIES},
            "unanswered_requests": self.unanswered,
            "expected_at_least": dict(sorted(self.expected.items())),
            "problems": self.problems(every_path=every_path),
            "failures": self.failures(),
            "phases": {name: round(seconds, 1) for name, seconds in self.phases.items()},
            "queue_calls": self.queue_calls,
        }

    def save(self, path: Path, every_path: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.as_json(every_path), indent=2) + "\n"
        path.write_text(text, encoding="utf-8")
        return path


def _n(value: int) -> str:
    return f"{value:,}"


def report_path(messages: int, seed: int, given: str | None = None) -> Path:
    """Where the raw counts go: ``given``, else $RELIABILITY_REPORT_JSON, else the temp dir."""
    chosen = given or os.environ.get(REPORT_ENV)
    if chosen:
        return Path(chosen)
    return Path(tempfile.gettempdir()) / f"webhook-relay-reliability-{messages}-seed{seed}.json"


# --- the run -------------------------------------------------------------------------------------


def run(
    messages: int,
    seed: int,
    environments: int = 4,
    save_to: Path | None = None,
    every_path: bool = True,
) -> Report:
    """Push ``messages`` through the local stack under seeded faults; account for each one.

    The report is saved to ``save_to`` (default ``report_path``) once the accounting is done,
    before the stack stops, so that a failure to stop cannot lose the figures; and again after,
    with the run's whole time. Its ``problems`` (saved with it; ``every_path`` as there) are
    for the caller to act on.
    """
    report = Report(messages, seed)
    path = save_to or report_path(messages, seed)  # before the stack touches the environment
    saved = dict(os.environ)
    started = time.monotonic()
    stack = DevStack(
        port=0,
        moto_port=0,
        sandbox_ports=(0, 0),
        environments=environments,
        environ={},
        extra_env=SPEED,
    )
    lap = started

    def phase(name: str) -> None:
        nonlocal lap
        report.phases[name] = time.monotonic() - lap
        lap = time.monotonic()

    try:
        stack.start()
        pollers = _QueueWatch.install(stack)
        phase("start")
        assert stack.aws_resources is not None
        planned = plan(messages, seed, stack.aws_resources.max_receive_count)
        for item in planned:
            report.entry[item.entry] += 1
            report.broken += item.broken
            report.exhausting += item.exhausting
        report.expected = expectations(planned)
        served = _inject(stack, planned, report)
        callers, given = _send(stack, planned)
        phase("send")
        _wait_until_drained(stack, limit_s=300 + messages * 0.2)
        phase("drain")
        _account(stack, planned, served, callers, given, pollers.receives_by_tag(), report)
        report.queue_glitches = pollers.glitches()
        report.queue_calls = dict(pollers.calls)
        phase("account")
        report.seconds = time.monotonic() - started
        report.save(path, every_path)
    finally:
        try:
            stack.stop()
            phase("stop")
        finally:
            os.environ.clear()
            os.environ.update(saved)
    report.seconds = time.monotonic() - started
    report.save(path, every_path)
    return report


class _QueueWatch:
    """The pollers' SQS client, noting what each receive hands out and each delete removes.

    moto's own queues are not thread-safe: concurrent receives can hand one message to two
    pollers, and concurrent deletes can bring a deleted message back, which then returns after
    the queue's 360 s visibility timeout and is handled again. The stack's moto_server
    (relay_local.moto_server) takes a lock around those calls; this watch fails the run if a
    message still comes out twice with one receive count, or again after its delete.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()  # the bookkeeping only, never around an SQS call
        self._seen: Counter[tuple[str, str]] = Counter()  # (message id, receive count)
        self._tags: dict[str, str] = {}  # message id -> tag
        self._handles: dict[str, str] = {}  # receipt handle -> message id
        self._deleted: set[str] = set()  # message ids
        self._again: list[str] = []  # message ids received after their delete
        self.calls: Counter[str] = Counter()  # receives, empty receives, deletes
        self._threads: set[int] = set()  # the threads that have received through the watch

    @classmethod
    def install(cls, stack: DevStack, limit_s: float = 30.0) -> _QueueWatch:
        """Give every poller the watched client, and wait until each has taken it.

        A poller takes it at its next call: one whose receive was under way at the swap could
        still hand out messages unwatched (seen as a receive missing, a duplicate without its
        redelivery), so nothing may be sent until each poller's thread has received through
        the watch (the queue is still empty: each such receive ends within its wait).
        """
        watched = cls(stack.pollers[0].sqs)
        for poller in stack.pollers:
            poller.sqs = watched
        threads = {poller._thread.ident for poller in stack.pollers if poller._thread}
        deadline = time.monotonic() + limit_s
        while not threads <= watched._threads:
            if time.monotonic() > deadline:
                raise TimeoutError("the pollers did not take the watched SQS client")
            time.sleep(0.05)
        return watched

    def receive_message(self, **kwargs: Any) -> Any:
        answer = self._client.receive_message(**kwargs)
        with self._lock:
            self._threads.add(threading.get_ident())
            self.calls["receives"] += 1
            self.calls["empty receives"] += not answer.get("Messages")
            for message in answer.get("Messages", []):
                message_id = message["MessageId"]
                count = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
                self._seen[message_id, count] += 1
                self._handles[message["ReceiptHandle"]] = message_id
                match = TAG.search(message.get("Body", ""))
                self._tags[message_id] = match.group() if match else "?"
                if message_id in self._deleted:
                    self._again.append(message_id)
        return answer

    def delete_message_batch(self, **kwargs: Any) -> Any:
        answer = self._client.delete_message_batch(**kwargs)
        handles = {entry["Id"]: entry["ReceiptHandle"] for entry in kwargs["Entries"]}
        with self._lock:
            self.calls["deletes"] += 1
            for done in answer.get("Successful", []):
                self._deleted.add(self._handles.get(handles[done["Id"]], "?"))
        return answer

    def receives_by_tag(self) -> Counter[str]:
        """How many times the delivery queue handed out each message (by the tag it holds)."""
        with self._lock:
            received: Counter[str] = Counter()
            for (message_id, _), n in self._seen.items():
                received[self._tags.get(message_id, "?")] += n
            return received

    def glitches(self) -> list[str]:
        """Messages handed out twice with one receive count, or again after their delete."""
        twice = [
            f"{self._tags[message_id]}: message {message_id} received {n} times as receive {count}"
            for (message_id, count), n in self._seen.items()
            if n > 1
        ]
        again = [
            f"{self._tags[message_id]}: message {message_id} received again after its delete"
            for message_id in self._again
        ]
        return twice + again

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _inject(stack: DevStack, planned: list[Planned], report: Report) -> dict[str, list[str]]:
    """Serve each request the fault its message's plan gives for that request's turn."""
    by_tag = {item.tag: item for item in planned}
    served: dict[str, list[str]] = defaultdict(list)  # tag -> catalogue keys met, in order
    lock = threading.Lock()

    def choose(request: Received) -> Fault | None:
        match = TAG.search(request.body.decode("utf-8", "replace"))
        item = by_tag.get(match.group()) if match else None
        if item is None:
            with lock:
                report.faults["ok"] += 1
            return None
        with lock:  # a message's requests come one after another; the lock orders any overlap
            key, fault = item.fault(len(served[item.tag]))
            served[item.tag].append(key)
            report.faults[key] += 1
        return fault

    for sandbox in stack.sandboxes.values():
        sandbox.set_chooser(choose)
    return served


class _Backlog:
    """Hold producers back while the delivery queue is deep.

    moto's queue scans every message on each receive, so a queue filled all at once makes the
    run quadratic; a real queue does not care, and the relay sees the same traffic either way.
    """

    def __init__(self, stack: DevStack, limit: int = BACKLOG_LIMIT) -> None:
        self._sqs = boto3.client("sqs")
        self._url = stack.env["DELIVERY_QUEUE_URL"]
        self._limit = limit
        self._lock = threading.Lock()
        self._depth, self._checked = 0, 0.0

    def wait_for_room(self) -> None:
        while True:
            with self._lock:
                if time.monotonic() - self._checked > 0.5:
                    self._depth = int(
                        self._sqs.get_queue_attributes(
                            QueueUrl=self._url, AttributeNames=["ApproximateNumberOfMessages"]
                        )["Attributes"]["ApproximateNumberOfMessages"]
                    )
                    self._checked = time.monotonic()
                if self._depth < self._limit:
                    return
            time.sleep(0.25)


@dataclass(frozen=True)
class Answer:
    """The webhook's final answer to a caller, after the caller's own retries."""

    status: int
    body: Any  # parsed JSON, or None
    tries: int
    statuses: tuple[int, ...] = ()  # every try's status: a failure's report, duplicates' causes


def _send(
    stack: DevStack, planned: list[Planned]
) -> tuple[dict[str, Answer], dict[str, list[str]]]:
    """Send every message; return the webhook's final answers and the relay ids given out.

    A synchronous caller retries 503, 504 and 409 with the same key until it gets a final
    answer; a 504 with ``"status": "held"`` is final (the message is parked, and the key
    answers every repeat with the same 504, sending nothing).

    Relay ids, by tag: each id in any of the webhook's answers to the message (the caller's
    retries included: one id, or the caller was told two); for a producer's message, its SQS
    message id, which the delivery function takes as its relay id when the message has no
    ``RelayId`` attribute (relay.queue_worker), as no producer's message here has.
    """
    backlog = _Backlog(stack)
    queue_url = stack.env["DELIVERY_QUEUE_URL"]
    given: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()

    def produce(batch: list[Planned]) -> None:
        sqs = boto3.client("sqs")
        for start in range(0, len(batch), 10):
            backlog.wait_for_room()
            chunk = batch[start : start + 10]
            entries = [
                {"Id": str(n), "MessageBody": json.dumps(p.body)} for n, p in enumerate(chunk)
            ]
            sent = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            with lock:
                for done in sent.get("Successful", []):
                    given[chunk[int(done["Id"])].tag].append(done["MessageId"])

    producer = threading.Thread(target=produce, args=([p for p in planned if p.entry == "sqs"],))
    producer.start()
    http = urllib3.PoolManager(maxsize=16, retries=False, timeout=30)
    answers: dict[str, Answer] = {}

    def post(item: Planned) -> None:
        headers = {
            "Authorization": f"Bearer {DEV_API_KEY}",
            "Content-Type": "application/json",
            "Idempotency-Key": item.tag,
        }
        if item.entry == "http async":
            headers["Prefer"] = "respond-async"
            backlog.wait_for_room()
        # A well-behaved client: the same key again after 503, 504 or 409, until final; a 504
        # "held" is final (the message is parked for an operator; a repeat would only get the
        # same 504 back). A 409 can last until the invocation holding the key ends (up to the
        # function's timeout: a DynamoDB write whose answer was lost, then retried by botocore,
        # finds its own record in progress), so 409s are waited out for longer and do not use
        # up the tries.
        statuses: list[int] = []
        attempt, in_progress_until = 0, time.monotonic() + IN_PROGRESS_PATIENCE_S
        while True:
            answer = http.request(
                "POST",
                f"{stack.url}/v1/messages",
                body=json.dumps(item.body).encode(),
                headers=headers,
            )
            statuses.append(answer.status)
            try:
                parsed = json.loads(answer.data)
            except ValueError:
                parsed = None
            relay_id = parsed.get("id") if isinstance(parsed, dict) else None
            if isinstance(relay_id, str):
                with lock:
                    given[item.tag].append(relay_id)
            held = isinstance(parsed, dict) and parsed.get("status") == HELD
            if (answer.status == 504 and held) or answer.status not in (409, 503, 504):
                break
            if answer.status == 409 and time.monotonic() < in_progress_until:
                time.sleep(0.5)
                continue
            attempt += 1
            if attempt == 10:
                break
            time.sleep(0.05 * attempt)
        answers[item.tag] = Answer(answer.status, parsed, len(statuses), tuple(statuses))

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(post, [p for p in planned if p.entry != "sqs"]))
    producer.join()
    return answers, given


def _wait_until_drained(stack: DevStack, limit_s: float) -> None:
    sqs = boto3.client("sqs")
    deadline, quiet_since = time.monotonic() + limit_s, None
    while time.monotonic() < deadline:
        counts = sqs.get_queue_attributes(
            QueueUrl=stack.env["DELIVERY_QUEUE_URL"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if sum(int(v) for v in counts.values()) == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2:
                return
        else:
            quiet_since = None
        time.sleep(0.25)
    raise TimeoutError("the delivery queue did not drain")


# --- the accounting ------------------------------------------------------------------------------


@dataclass
class Trace:
    """Everything seen of one message."""

    # The provider's answers to the requests under the message's relay id, in order (None =
    # none); and, by the same id, its dead letters.
    answers: list[int | None] = field(default_factory=list)
    served: list[str] = field(default_factory=list)  # catalogue keys met, resets before read too
    parked: list[dict[str, str]] = field(default_factory=list)  # its dead letters' attributes
    caller: Answer | None = None  # the webhook's final answer (webhook entries only)
    relay_id: str | None = None  # as the relay gave it out; None: never learnt


@dataclass(frozen=True)
class Verdict:
    state: str | None  # a STATES key, None when the message is in no (or no valid) end state
    failures: tuple[tuple[str, str], ...] = ()  # (FAILURES key, what is wrong)
    duplicates: int = 0
    ambiguous: bool = False
    ambiguous_sends: int = 0
    copies: int = 0  # dead letters beyond the first, each the same as the first


def _accepted(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _refusal(status: int | None) -> bool:
    """A final 4xx (the relay retries 408 and 429)."""
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def judge(item: Planned, trace: Trace) -> Verdict:
    """Put one message in its end state, strictly; see docs/reliability.md, "How the run is judged".

    - ``trace`` holds what the stand-ins recorded under the message's relay id (X-Relay-Id);
    - delivered: the provider's 2xx answer arrived at least once (a request it received but
      never answered does not count); once: it kept exactly one request under that relay id;
    - a duplicate is any further request the provider may have kept (answered 2xx, or not
      answered at all); it is explained only if no 2xx came before it, so that every one
      follows an unanswered request (an ambiguous send) under the same relay id;
    - dead-lettered: one dead letter (or one identical copy per retry of its send, counted: a
      send answered late may have been stored as well as its retry), no 2xx, and a reason
      (ErrorKind, ErrorMessage, ErrorStatus where the provider answered with a status) that
      matches the faults met;
    - held (synchronous): a send that went unanswered (a hang, or a reset before or after the
      read: the relay cannot tell those apart) is parked as exhausted, PossiblyDelivered,
      QueuedBy webhook, under the RelayId and key its caller was given, and its caller told 504
      ``"status": "held"``; it is never sent again, so a synchronous message has no request
      after an unanswered one (no duplicate), and one with an unanswered request but no dead
      letter is lost, whatever its caller was told;
    - refused: a synchronous caller's final 502 after the provider's 4xx, with no unanswered
      send before it (that would have been held); never after a 2xx arrived;
    - parked after an ambiguous send: possibly delivered, counted apart;
    - anything else (including a caller left with 503, 504 or 409 without cause) is lost.
    """
    tag, answers = item.tag, trace.answers
    failures: list[tuple[str, str]] = []
    first_ok = next((i for i, a in enumerate(answers) if _accepted(a)), None)
    before_ok = answers if first_ok is None else answers[:first_ok]
    ambiguous = any(a is None for a in before_ok)
    kept = [a for a in answers if a is None or _accepted(a)]
    duplicates = max(0, len(kept) - 1)
    # A synchronous send whose request went unanswered (to the relay: a reset before the read
    # too, which it cannot tell from one after) is held, and its key answers every retry with
    # the same 504 without a send: any request after such a one is a resend, a duplicate the
    # relay could not rule out. (Only if the parking fails does the caller's retry send again,
    # and the harness makes no SQS call fail.)
    unanswered = item.entry == "http sync" and any(key in UNANSWERED for key in trace.served)
    resent = unanswered and any(key in UNANSWERED for key in trace.served[:-1])
    if first_ok is not None and any(a is None or _accepted(a) for a in answers[first_ok + 1 :]):
        failures.append(("unexplained_duplicates", f"{tag}: sent again after its 2xx: {answers}"))
    elif item.entry == "http sync" and (duplicates or resent):
        failures.append(
            (
                "unexplained_duplicates",
                f"{tag}: synchronous, sent again after an unanswered request, not held: "
                f"met {trace.served}, answers {answers}",
            )
        )
    caller = trace.caller
    where = (
        f"{tag} ({item.entry}, {item.provider}, relay id {trace.relay_id}; "
        f"met {trace.served}, answers {answers})"
    )

    # botocore retries a dead-letter send whose answer was late, and SQS may have stored both:
    # the same letter twice. Up to one copy per attempt after the first is counted
    # (``Report.copies``), not a failure; more, or letters that differ, are.
    letters = trace.parked
    identical = bool(letters) and letters.count(letters[0]) == len(letters)
    copies = len(letters) - 1 if identical and len(letters) <= PARKING_ATTEMPTS else 0

    def verdict(state: str | None) -> Verdict:
        ambiguous_sends = before_ok.count(None)
        return Verdict(state, tuple(failures), duplicates, ambiguous, ambiguous_sends, copies)

    if item.entry == "http async" and (caller is None or caller.status != 202):
        status = caller and caller.status
        failures.append(("lost", f"{where}: the webhook answered {status}, not 202 (queued)"))
        return verdict(None)
    if item.entry == "sqs" and caller is not None:
        failures.append(("wrong_answers", f"{where}: an SQS message has a webhook answer"))

    if trace.parked:
        if len(trace.parked) > 1 and not copies:
            reasons = [
                {k: v for k, v in letter.items() if k.startswith("Error")}
                for letter in trace.parked
            ]
            failures.append(
                ("bad_dead_letters", f"{where}: parked {len(trace.parked)} times: {reasons}")
            )
        letter = trace.parked[0]
        kind = letter.get("ErrorKind")
        if first_ok is not None:
            failures.append(
                ("failed_though_accepted", f"{where}: parked as {kind} after the provider's 2xx")
            )
            return verdict(None)
        if item.entry == "http sync" and not _held(item, caller):
            # Parked only when held: its caller must have been told so, in the final answer.
            failures.append(("wrong_answers", f"{where}: parked, but the caller got {caller}"))
        problems = _reason_problems(item, trace, letter, ambiguous)
        failures += [("bad_dead_letters", f"{where}: {problem}") for problem in problems]
        if problems or len(trace.parked) > 1 + copies:
            return verdict(None)
        # A synchronous one held after a reset before the read (not recorded, so not counted
        # as ambiguous) is `parked exhausted`; after a hang or a reset after the read,
        # `ambiguous parked exhausted`.
        return verdict(f"ambiguous parked {kind}" if ambiguous else f"parked {kind}")

    if item.broken:
        failures.append(("lost", f"{where}: a broken message was not dead-lettered as invalid"))
        return verdict(None)
    if item.exhausting:
        failures.append(("lost", f"{where}: meant to be exhausted, but not dead-lettered"))
        return verdict(None)

    if item.entry == "http sync" and caller is not None and caller.status >= 300:
        if first_ok is not None:
            failures.append(
                (
                    "failed_though_accepted",
                    f"{where}: the caller got {caller.status} after the provider's 2xx",
                )
            )
            return verdict(None)
        body = caller.body if isinstance(caller.body, dict) else {}
        if ambiguous or unanswered or _held(item, caller):
            # A send that went unanswered is held: parked, and answered 504 "held" from then on,
            # so nothing after it can end in a 503, a 502 or a plain 504. (The relay retries
            # within a send only what was not taken, never after an unanswered request:
            # relay.transport, read=False.) Without the dead letter, nothing tells an operator
            # that the provider may have it: lost, whatever the caller was told. (A plain 504
            # would mean the parking failed, which the harness never causes.)
            failures.append(
                (
                    "lost",
                    f"{where}: an unanswered send, but no dead letter; the caller got "
                    f"{caller.status} {body}, {caller.statuses}",
                )
            )
            return verdict(None)
        refused = (
            caller.status == 502
            and bool(answers)
            and _refusal(answers[-1])
            and body.get("provider_status") == answers[-1]
        )
        if refused:
            return verdict("refused")
        failures.append(
            ("lost", f"{where}: the caller was left with {caller.status} {body}, {caller.statuses}")
        )
        return verdict(None)

    if first_ok is not None:
        if item.entry == "http sync" and (
            caller is None
            or caller.status != 201
            or not isinstance(caller.body, dict)
            or caller.body.get("provider_status") != answers[first_ok]
            # docs/providers.md: a success body is passed on only when it is a JSON object
            or ("provider_response" in caller.body) != _json_object(item, trace, first_ok)
        ):
            failures.append(("wrong_answers", f"{where}: delivered, but the caller got {caller}"))
        return verdict("delivered once" if len(kept) == 1 else "delivered again")

    if item.entry == "http sync" and caller is not None and caller.status == 201:
        failures.append(("wrong_answers", f"{where}: the caller was told 201, no 2xx was sent"))
    failures.append(("lost", f"{where}: no 2xx, no dead letter, caller {caller}"))
    return verdict(None)


def _held(item: Planned, caller: Answer | None) -> bool:
    """Whether the webhook's final answer said the message was held: 504, ``"status": "held"``,
    the provider's name and the message's relay id (``id``)."""
    body = caller.body if caller is not None and isinstance(caller.body, dict) else {}
    return (
        caller is not None
        and caller.status == 504
        and body.get("status") == HELD
        and body.get("provider") == item.provider
        and isinstance(body.get("id"), str)
    )


def _json_object(item: Planned, trace: Trace, answer: int) -> bool:
    """Whether the body of the provider's ``answer``-th recorded answer was a JSON object."""
    # A request reset before it was read is not recorded: skip those turns of the plan.
    turns = [n for n, key in enumerate(trace.served) if key != "reset before read"]
    fault = item.fault(turns[answer])[1] if answer < len(turns) else None
    if fault is None or fault.kind not in ("status", "garbage"):
        return (
            item.provider == "lancepilot"
        )  # the normal 201: Lancepilot's has a body, Fluents' not
    try:
        return isinstance(json.loads(fault.body), dict)
    except ValueError:
        return False


def _reason_problems(
    item: Planned, trace: Trace, letter: dict[str, str], ambiguous: bool
) -> list[str]:
    """What is wrong with a dead letter's reason, given the faults its message met.

    ``ambiguous``: the provider kept a request of the message without answering, so it may
    have it, and a dead letter for it must say so (PossiblyDelivered) unless it is invalid.
    One that says so must have met a request the relay saw go unanswered (``UNANSWERED``).
    What the webhook queued or held carries the RelayId and IdempotencyKey its caller was
    given; a held synchronous send is `exhausted`, PossiblyDelivered, QueuedBy webhook, its
    last request unanswered, and its ErrorMessage says so (``HELD_DETAIL``).
    """
    kind, detail, status = (letter.get(k) for k in ("ErrorKind", "ErrorMessage", "ErrorStatus"))
    if kind is None:
        return [
            "dead letter without ErrorKind (no reason: moved by the queue's redrive policy?); "
            f"attributes {sorted(letter)}"
        ]
    problems = [] if detail else [f"{kind} dead letter without ErrorMessage"]
    relay_id = letter.get("RelayId")
    if not relay_id:
        problems.append(f"{kind} dead letter without RelayId")
    if item.entry in ("http async", "http sync"):
        # The ids the webhook gave it (in its 202, or its 504 "held"): a redrive must
        # recognise it, and an operator find it by the id its caller holds.
        given = trace.caller.body if trace.caller and isinstance(trace.caller.body, dict) else {}
        if relay_id != given.get("id") or letter.get("IdempotencyKey") != item.tag:
            done = "queued" if item.entry == "http async" else "held"
            problems.append(
                f"RelayId {relay_id} / IdempotencyKey {letter.get('IdempotencyKey')}, but the "
                f"webhook {done} it as {given.get('id')} with the key {item.tag}"
            )
    answers, served = trace.answers, trace.served
    if item.entry == "http sync":  # held: the one way a synchronous message is parked
        queued_by, possibly = letter.get("QueuedBy"), letter.get("PossiblyDelivered")
        if (kind, queued_by, possibly) != ("exhausted", "webhook", "true"):
            problems.append(
                f"held as {kind}, QueuedBy {queued_by}, PossiblyDelivered {possibly}: a held "
                "synchronous send is exhausted, QueuedBy webhook, PossiblyDelivered true"
            )
        if not served or served[-1] not in UNANSWERED:
            problems.append(f"held, but its last request ({served[-1:]}) was answered")
        if detail and not detail.endswith(HELD_DETAIL):
            problems.append(f"held, but its ErrorMessage does not end {HELD_DETAIL!r}: {detail!r}")
    if kind == "invalid":
        if not item.broken:
            problems.append("parked as invalid, but the message was valid")
        if answers or served:
            problems.append("parked as invalid after reaching the provider")
        if status is not None:
            problems.append(f"invalid with ErrorStatus {status}")
    elif kind == "permanent":
        if not answers or not _refusal(answers[-1]):
            problems.append("parked as permanent, but the provider's last answer was no refusal")
        elif status != str(answers[-1]):
            problems.append(f"ErrorStatus {status}, but the provider refused with {answers[-1]}")
    elif kind == "exhausted":
        final = [a for a in answers if a is not None and not 500 <= a < 600 and a not in (408, 429)]
        unexpected = [
            key for key in served if CATALOGUE[key].effect not in ("retryable", "ambiguous")
        ]
        if item.broken or final or unexpected or not served:
            problems.append("parked as exhausted, but not every fault met was retryable")
        # The relay reports the status of its last attempt, when that attempt got one.
        expected = str(answers[-1]) if served and CATALOGUE[served[-1]].status else None
        if status != expected:
            problems.append(f"ErrorStatus {status}, but the last answer was {expected}")
    else:
        problems.append(f"unknown ErrorKind {kind!r}")
    possibly = letter.get("PossiblyDelivered") == "true"
    if ambiguous and kind in ("permanent", "exhausted") and not possibly:
        problems.append(f"{kind} after an ambiguous send, but without PossiblyDelivered")
    if possibly and not any(key in UNANSWERED for key in served):
        problems.append(f"{kind} with PossiblyDelivered, but no request went unanswered")
    return problems


def _account(
    stack: DevStack,
    planned: list[Planned],
    served: dict[str, list[str]],
    callers: dict[str, Answer],
    given: dict[str, list[str]],
    receives: Mapping[str, int],
    report: Report,
) -> None:
    owner, conflicts = owners(given)
    report.wrong_answers += conflicts
    traces: dict[str, Trace] = defaultdict(Trace)
    for relay_id, tag in owner.items():
        traces[tag].relay_id = traces[tag].relay_id or relay_id
    for sandbox in stack.sandboxes.values():
        report.violations += sandbox.violations()
        received = sandbox.received
        report.unanswered += sum(r.answered is None for r in received)
        report.untraced += trace_requests(sandbox.provider, received, owner, traces)
    for tag, keys in served.items():
        traces[tag].served = keys
    for tag, answer in callers.items():
        traces[tag].caller = answer
    for letter_id, carried, letter in _dead_letters(stack):
        whose = owner.get(letter_id or "")
        if whose is None:
            report.bad_dead_letters.append(
                f"a dead letter (holding {carried}) with RelayId {letter_id!r}, given to no "
                f"message: {letter}"
            )
        elif carried != whose:
            report.bad_dead_letters.append(
                f"a dead letter with {whose}'s RelayId {letter_id} holds {carried}: {letter}"
            )
        else:
            traces[whose].parked.append(letter)
    for item in planned:
        verdict = judge(item, traces[item.tag])
        if verdict.state is not None:
            report.states[verdict.state] += 1
            if "parked" in verdict.state:
                report.dead_letter_kinds[verdict.state.rsplit(" ", 1)[1]] += 1
                report.held += item.entry == "http sync"
        report.ambiguous += verdict.ambiguous
        report.ambiguous_sends += verdict.ambiguous_sends
        report.duplicates += verdict.duplicates
        report.copies[item.entry] += verdict.copies
        report.ambiguous_by_entry[item.entry] += verdict.ambiguous
        report.ambiguous_sends_by_entry[item.entry] += verdict.ambiguous_sends
        causes = duplicate_causes(
            item.entry, verdict.duplicates, traces[item.tag].caller, receives.get(item.tag, 0)
        )
        report.duplicates_by[item.entry].update(causes)
        for name, text in verdict.failures:
            getattr(report, name).append(text)


def duplicate_causes(
    entry: str, duplicates: int, caller: Answer | None, receives: int
) -> Counter[str]:
    """Why a message's ``duplicates`` (copies beyond the first the provider may have kept) went
    out, as CAUSES keys.

    The relay ends a send at its first request that goes unanswered or is answered 2xx, so each
    occasion to send a message puts at most one such copy out. The occasions: each of a
    synchronous caller's requests to the webhook but those answered 409 (in progress elsewhere:
    nothing sent), and each receive of the message from the delivery queue (the webhook sends
    nothing of what it queues). Copies beyond the first go first to the caller's retries, then
    to the queue's receives beyond the first occasion; what neither accounts for is
    unattributed (Report.problems requires none). A synchronous message has no copy beyond the
    first since its unanswered send is held (judge), so no caller's retry is a cause any more;
    the attribution is kept for a run that breaks that.
    """
    causes: Counter[str] = Counter()
    tried = 0
    if entry == "http sync" and caller is not None:
        statuses = caller.statuses or (0,) * caller.tries  # (0,) * n: n tries, none a 409
        tried = sum(status != 409 for status in statuses)
    causes["caller retry"] = min(duplicates, max(0, tried - 1))
    left = duplicates - causes["caller retry"]
    causes["redelivery"] = min(left, max(0, receives - (0 if tried else 1)))
    causes["unattributed"] = left - causes["redelivery"]
    return +causes


def owners(given: Mapping[str, list[str]]) -> tuple[dict[str, str], list[str]]:
    """Relay id -> the tag of the message it was given out for; and the wrong answers among
    them: a message given two ids (its caller could not trace it), an id given to two."""
    owner: dict[str, str] = {}
    wrong: list[str] = []
    for tag, ids in given.items():
        distinct = list(dict.fromkeys(ids))
        if len(distinct) > 1:
            wrong.append(f"{tag}: given {len(distinct)} relay ids: {distinct}")
        for relay_id in distinct:
            first = owner.setdefault(relay_id, tag)
            if first != tag:
                wrong.append(f"relay id {relay_id} given to both {first} and {tag}")
    return owner, wrong


def trace_requests(
    provider: str, received: list[Received], owner: Mapping[str, str], traces: dict[str, Trace]
) -> list[str]:
    """Add each request's answer to the trace of its relay id's message, in arrival order.

    Returns the requests that cannot be traced so: no ``X-Relay-Id``, an id given to no
    message, or one whose message is not the one the request holds (its tag): the relay id the
    relay gave out must be the one it sent under. They are left out of every trace.
    """
    untraced: list[str] = []
    for request in sorted(received, key=lambda r: r.at):
        tag = owner.get(request.relay_id or "")
        match = TAG.search(request.body.decode("utf-8", "replace"))
        carried = match.group() if match else None
        if tag is not None and carried == tag:
            traces[tag].answers.append(request.answered)
            continue
        whose = "given to no message" if tag is None else f"given to {tag}"
        kept = "kept" if request.kept else f"answered {request.answered}"
        untraced.append(
            f"{provider}: a request holding {carried} ({kept}) under X-Relay-Id "
            f"{request.relay_id!r}, {whose}"
        )
    return untraced


def _dead_letters(stack: DevStack) -> list[tuple[str | None, str | None, dict[str, str]]]:
    """Every dead letter: its RelayId, the tag its body holds, its attributes (name -> value).

    Each SQS message once: a soak's accounting can outlast a visibility timeout (1,384 s at
    7e7e689, whose 600 s let the first letters be received two or three times: counted as
    copies, or failed), so letters stay hidden for SQS's longest, and one received again is
    skipped.
    """
    sqs = boto3.client("sqs")
    found: list[tuple[str | None, str | None, dict[str, str]]] = []
    seen: set[str] = set()
    while batch := sqs.receive_message(
        QueueUrl=stack.env["DEAD_LETTER_QUEUE_URL"],
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        VisibilityTimeout=MAX_VISIBILITY,
    ).get("Messages", []):
        for message in batch:
            if message["MessageId"] in seen:
                continue
            seen.add(message["MessageId"])
            attributes = {
                name: value.get("StringValue", "")
                for name, value in message.get("MessageAttributes", {}).items()
            }
            match = TAG.search(message["Body"])
            found.append((attributes.get("RelayId"), match.group() if match else None, attributes))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--environments", type=int, default=4)
    parser.add_argument(
        "--json",
        metavar="PATH",
        help=f"where to write the raw counts (default ${REPORT_ENV} or a temp file)",
    )
    parser.add_argument(
        "--allow-untried-paths",
        action="store_true",
        help="do not fail a run whose plan leaves a fault kind, an entry point or a way to the "
        "dead-letter queue untried (small runs); every other check still applies",
    )
    args = parser.parse_args()
    path = report_path(args.messages, args.seed, args.json)
    every_path = not args.allow_untried_paths
    report = run(args.messages, args.seed, args.environments, save_to=path, every_path=every_path)
    print(f"Run of {args.messages:,} messages, seed {args.seed}:\n")
    print(report.table())
    print(f"\nraw counts: {path}")
    if problems := report.problems(every_path=every_path):
        raise SystemExit("FAILED:\n- " + "\n- ".join(problems))


if __name__ == "__main__":
    main()
