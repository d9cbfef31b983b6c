"""Thousands of messages through both entry points under seeded provider faults: none lost,
every one delivered once (counted at the stand-ins by relay id) or parked with the reason its
faults call for, duplicates (and parked messages that may have been delivered) only after
ambiguous sends under the same relay id, and none of a synchronous message: its unanswered send
is held (parked, its caller told 504 "held"), never sent again."""

from __future__ import annotations

import json
import time

import pytest
import urllib3

from relay_local.sandbox import Fault, ProviderSandbox, Received
from tests.reliability.harness import (
    AMBIGUOUS,
    CATALOGUE,
    ENTRIES,
    HELD_DETAIL,
    PARKING_ATTEMPTS,
    UNANSWERED,
    Answer,
    Planned,
    Report,
    Trace,
    duplicate_causes,
    expectations,
    judge,
    owners,
    plan,
    report_path,
    run,
    trace_requests,
)

MESSAGES = 2000  # `make soak` runs 50,000 with the same harness
SEED = 7


# Alone on one xdist worker with the crash test: they load the machine, and share nothing.
@pytest.mark.slow
@pytest.mark.xdist_group("reliability")
def test_nothing_is_lost_and_nothing_is_sent_twice_without_cause():
    report = run(MESSAGES, SEED)

    saved = report.save(report_path(MESSAGES, SEED))
    print(f"\n{report.table()}\n\nraw counts: {saved}")
    # The one check of a run, the one `make reliability` and `make soak` fail on too: nothing
    # lost, each parked with the reason its faults call for, no request untraced or against a
    # provider's document, one end state per message, every fault kind, entry point and way to
    # the dead-letter queue taken, and duplicates only after ambiguous sends, no more than the
    # stand-ins left unanswered, each on a caller's retry or a redelivery (Report.problems).
    assert report.problems() == []


# --- the plan and the judging, without the stack -------------------------------------------------


def test_a_seed_reproduces_the_same_plan():
    assert plan(300, SEED) == plan(300, SEED)
    assert plan(300, SEED) != plan(300, SEED + 1)
    # A message's plan does not depend on how many messages there are.
    assert plan(300, SEED)[:100] == plan(100, SEED)


def test_the_plan_has_every_fault_and_exhausting_messages_only_where_they_can_be_parked():
    planned = plan(MESSAGES, SEED)

    met = {key for item in planned for key, _ in item.attempts}
    assert met == set(CATALOGUE)
    exhausting = [item for item in planned if item.exhausting]
    assert exhausting
    assert all(item.entry != "http sync" and not item.broken for item in exhausting)
    # Retryable faults, and for some one ambiguous fault among the first five requests (one a
    # receive at least, for the queue's five receives): so it is met, and PossiblyDelivered due.
    ambiguous = [
        [n for n, (key, _) in enumerate(i.attempts) if key in AMBIGUOUS] for i in exhausting
    ]
    assert [] in ambiguous
    assert any(ambiguous)
    assert all(len(found) <= 1 and all(n < 5 for n in found) for found in ambiguous)
    assert all(
        CATALOGUE[item.fault(n)[0]].effect in ("retryable", "ambiguous")
        for item in exhausting
        for n in range(20)
    )
    assert all(not item.attempts for item in planned if item.broken)


def _passing_report(messages=10):
    """A report that passes every check, to break one thing at a time."""
    report = Report(messages, SEED)
    report.entry.update({"sqs": 4, "http async": 3, "http sync": 3})
    report.faults.update(dict.fromkeys(CATALOGUE, 1))
    report.broken = report.exhausting = 1
    report.states.update(
        {
            "delivered once": 4,
            "delivered again": 1,
            "parked invalid": 1,
            "parked permanent": 1,
            "parked exhausted": 1,
            "ambiguous parked exhausted": 1,
            "refused": 1,
        }
    )
    report.held = 1  # the synchronous message parked as `ambiguous parked exhausted`
    report.unanswered = report.faults["hang"] + report.faults["reset after read"]
    report.ambiguous = report.ambiguous_sends = 2
    report.duplicates = 2
    report.duplicates_by["sqs"]["redelivery"] = 1
    report.duplicates_by["http async"]["redelivery"] = 1
    report.expected = {"fault:ok": 1, "state:refused": 1, "held:synchronous": 1}
    return report


def _move(counts, source, target, n=1):
    counts[source] -= n
    counts[target] += n


def test_the_shared_check_passes_a_good_report_and_names_each_problem():
    assert _passing_report().problems() == []

    def problems(change, every_path=True):
        report = _passing_report()
        change(report)
        return report.problems(every_path=every_path)

    assert problems(lambda r: r.lost.append("rel-0000001: gone")) == [
        "lost: 1 (e.g. ['rel-0000001: gone'])"
    ]
    assert problems(lambda r: r.states.update({"delivered once": 1}))  # 11 end states for 10
    assert problems(lambda r: setattr(r, "duplicates", 3))  # more than the ambiguous sends
    assert problems(lambda r: setattr(r, "unanswered", 1))  # fewer than the ambiguous sends
    assert problems(lambda r: r.faults.update({"hang": 1}))  # unanswered != hangs + resets
    assert problems(lambda r: r.duplicates_by["sqs"].update({"unattributed": 1}))

    # A synchronous message sent again: its unanswered send should have been held.
    def resent_on_a_retry(report):
        report.duplicates_by["http async"]["redelivery"] -= 1
        report.duplicates_by["http sync"]["caller retry"] += 1

    resent = problems(resent_on_a_retry)
    assert len(resent) == 1
    assert "duplicates of synchronous messages {'caller retry': 1}" in resent[0]
    assert problems(lambda r: r.expected.update({"state:refused": 2}))  # the plan promised 2
    assert problems(lambda r: r.expected.update({"held:synchronous": 2}))
    assert problems(lambda r: _move(r.states, "parked invalid", "delivered once"))
    # Coverage: every fault kind, entry point and way to the dead-letter queue, unless a small
    # run's plan cannot hold them all.
    untried = [
        lambda r: r.faults.pop("429 date"),
        lambda r: _move(r.states, "ambiguous parked exhausted", "delivered once"),
        lambda r: _move(r.entry, "sqs", "http async", 4) or r.entry.pop("sqs"),
        lambda r: setattr(r, "held", 0) or r.expected.pop("held:synchronous"),
    ]
    for change in untried:
        assert problems(change) != []
        assert problems(change, every_path=False) == [], change


def test_what_the_plan_guarantees():
    planned = plan(MESSAGES, SEED)
    least = expectations(planned)

    valid = [item for item in planned if not item.broken]
    assert sum(v for k, v in least.items() if k.startswith("fault:")) == len(valid)
    exhausting = sum(item.exhausting for item in planned)
    # A synchronous message whose first request goes unanswered is held (parked as exhausted).
    held = [i for i in planned if i.entry == "http sync" and i.attempts[0][0] in UNANSWERED]
    assert least["held:synchronous"] == len(held) > 0
    assert least["state:parked exhausted"] + least["state:ambiguous parked exhausted"] == (
        exhausting + len(held)
    )
    assert least["state:ambiguous parked exhausted"] >= sum(
        i.attempts[0][0] in AMBIGUOUS for i in held
    )
    assert least["state:refused"] > 0
    assert least["state:parked permanent"] > 0
    assert {key.split(":", 1)[1] for key in least if key.startswith("fault:")} == set(CATALOGUE)


def test_duplicates_are_put_down_to_a_retry_or_a_redelivery():
    def causes(entry, duplicates, statuses=(), receives=0):
        caller = Answer(statuses[-1], {}, len(statuses), tuple(statuses)) if statuses else None
        return dict(duplicate_causes(entry, duplicates, caller, receives))

    assert causes("http sync", 1, (504, 201)) == {"caller retry": 1}
    # A 409 sends nothing: the caller's two tries were one occasion to send.
    assert causes("http sync", 1, (409, 201)) == {"unattributed": 1}
    assert causes("sqs", 2, receives=3) == {"redelivery": 2}
    assert causes("sqs", 2, receives=2) == {"redelivery": 1, "unattributed": 1}
    # The webhook sends nothing of what it queues: only the queue's receives count.
    assert causes("http async", 1, (503, 202), receives=1) == {"unattributed": 1}
    assert causes("http async", 1, (202,), receives=2) == {"redelivery": 1}
    assert causes("sqs", 0, receives=5) == {}
    assert set(ENTRIES) == {"sqs", "http async", "http sync"}


def _item(entry="sqs", broken=False, exhausting=False, provider="lancepilot"):
    return Planned(0, "rel-0000000", entry, provider, {}, broken, exhausting, ())


def _letter(kind, status=None, message="why", **more):
    letter = {"ErrorKind": kind, "ErrorMessage": message, "RelayId": "r", **more}
    if status is not None:
        letter["ErrorStatus"] = str(status)
    return letter


def test_delivered_once_and_after_an_ambiguous_send():
    assert judge(_item(), Trace([201], ["ok"])).state == "delivered once"

    again = judge(_item(), Trace([None, 201], ["hang", "ok"]))

    assert again.state == "delivered again"
    assert (again.ambiguous, again.duplicates, again.failures) == (True, 1, ())


def _request(relay_id, text="Order rel-0000000 has shipped", answered=201, at=0.0):
    headers = {} if relay_id is None else {"x-relay-id": relay_id}
    return Received("POST", "/v1/messages", headers, text.encode(), None, (), answered, at)


def test_requests_are_traced_by_relay_id_and_must_hold_that_message():
    owner, wrong = owners({"rel-0000000": ["a", "a"], "rel-0000001": ["b"]})
    assert (owner, wrong) == ({"a": "rel-0000000", "b": "rel-0000001"}, [])
    traces = {"rel-0000000": Trace(), "rel-0000001": Trace()}

    untraced = trace_requests(
        "fluents",
        [
            _request("a", answered=None, at=2),
            _request("a", answered=503, at=1),
            _request("a", at=3),
            _request(None),  # no X-Relay-Id
            _request("z"),  # an id the relay never gave out
            _request("b"),  # the relay id of rel-0000001, holding rel-0000000
        ],
        owner,
        traces,
    )

    assert traces["rel-0000000"].answers == [503, None, 201]  # in the order they came
    assert traces["rel-0000001"].answers == []
    assert len(untraced) == 3
    assert "given to rel-0000001" in untraced[2]


def test_a_message_given_two_relay_ids_or_an_id_given_twice_is_a_wrong_answer():
    _, wrong = owners({"rel-0000000": ["a", "b"], "rel-0000001": ["b"]})

    assert len(wrong) == 2


def test_a_send_after_the_2xx_arrived_is_an_unexplained_duplicate():
    verdict = judge(_item(), Trace([201, 201], ["ok", "ok"]))

    assert [name for name, _ in verdict.failures] == ["unexplained_duplicates"]


def test_a_dead_letter_without_a_reason_is_a_failure_not_a_crash():
    # As the queue's redrive policy would leave it: the body and the original attributes only.
    verdict = judge(_item(), Trace([503] * 4, ["503"] * 4, [{"RelayId": "r"}]))

    assert verdict.state is None
    ((name, text),) = verdict.failures
    assert name == "bad_dead_letters"
    assert "without ErrorKind" in text


def test_a_dead_letter_must_carry_the_reason_its_faults_call_for():
    def problems(item, trace):
        return [name for name, _ in judge(item, trace).failures]

    assert problems(_item(), Trace([422], ["4xx"], [_letter("permanent", 422)])) == []
    assert problems(_item(), Trace([422], ["4xx"], [_letter("permanent", 400)])) != []
    assert problems(_item(), Trace([422], ["4xx"], [_letter("permanent")])) != []
    assert problems(_item(), Trace([422], ["4xx"], [_letter("permanent", 422, "")])) != []
    assert problems(_item(), Trace([503], ["503"], [_letter("permanent", 503)])) != []
    assert problems(_item(), Trace([422], ["4xx"], [_letter("exhausted", 422)])) != []
    assert problems(_item(), Trace([], [], [_letter("invalid")])) != []  # not a broken one
    assert problems(_item(broken=True), Trace([], [], [_letter("invalid")])) == []
    assert problems(_item(broken=True), Trace([], [], [_letter("invalid", 400)])) != []
    exhausted = Trace([503, 429], ["503", "reset before read", "429"], [_letter("exhausted", 429)])
    assert problems(_item(exhausting=True), exhausted) == []
    no_status = Trace([503], ["503", "reset before read"], [_letter("exhausted", 503)])
    assert problems(_item(exhausting=True), no_status) != []  # the last attempt got no status
    # Two letters for one message pass only as a copy of one (the same, counted): a dead-letter
    # send answered late and retried. More copies than its retries can make do not.
    twice = Trace([422], ["4xx"], [_letter("permanent", 422), _letter("permanent", 422)])
    assert problems(_item(), twice) == []
    assert judge(_item(), twice).copies == 1
    thrice = Trace([422], ["4xx"], [_letter("permanent", 422)] * (PARKING_ATTEMPTS + 1))
    assert problems(_item(), thrice) != []
    differ = Trace([422], ["4xx"], [_letter("permanent", 422), _letter("exhausted", 422)])
    assert problems(_item(), differ) != []
    queued = Answer(202, {"id": "r", "status": "queued"}, 1)
    letter = {**_letter("permanent", 422), "IdempotencyKey": "rel-0000000"}
    assert problems(_item("http async"), Trace([422], ["4xx"], [letter], queued)) == []
    other = {**letter, "RelayId": "another"}
    assert problems(_item("http async"), Trace([422], ["4xx"], [other], queued)) != []


def test_parked_after_an_ambiguous_send_is_counted_apart():
    letter = {**_letter("permanent", 422), "PossiblyDelivered": "true"}
    parked = judge(_item(), Trace([None, 422], ["hang", "4xx"], [letter]))
    unflagged = judge(_item(), Trace([None, 422], ["hang", "4xx"], [_letter("permanent", 422)]))
    clean = judge(
        _item("http sync"), Trace([400], ["4xx"], caller=Answer(502, {"provider_status": 400}, 1))
    )

    assert (parked.state, parked.failures) == ("ambiguous parked permanent", ())
    # Parked without saying it may have been delivered: a redrive would send it again unwarned.
    assert [name for name, _ in unflagged.failures] == ["bad_dead_letters"]
    assert (clean.state, clean.failures) == ("refused", ())


# --- held synchronous sends ----------------------------------------------------------------------


def _held_answer(relay_id="r", provider="lancepilot"):
    body = {"message": "no answer", "provider": provider, "id": relay_id, "status": "held"}
    return Answer(504, body, 1, (504,))


def _held_letter(**changes):
    letter = {
        "ErrorKind": "exhausted",
        "ErrorMessage": f"lancepilot gave no answer in time; {HELD_DETAIL}",
        "RelayId": "r",
        "IdempotencyKey": "rel-0000000",
        "PossiblyDelivered": "true",
        "QueuedBy": "webhook",
        **changes,
    }
    return {name: value for name, value in letter.items() if value is not None}


def _held(answers=(503, None), served=("503", "hang"), letters=None, caller=None):
    letters = [_held_letter()] if letters is None else letters
    trace = Trace(list(answers), list(served), letters, caller or _held_answer())
    return judge(_item("http sync"), trace)


def test_a_synchronous_send_without_an_answer_is_held():
    held = _held()
    # A reset before the read is not recorded: held, but not counted as an ambiguous send.
    reset = _held(answers=(), served=("reset before read",))

    assert (held.state, held.failures, held.duplicates) == ("ambiguous parked exhausted", (), 0)
    assert (held.ambiguous, held.ambiguous_sends) == (True, 1)
    assert (reset.state, reset.failures, reset.ambiguous) == ("parked exhausted", (), False)


def test_a_held_send_must_be_parked_as_held_and_its_caller_told_so():
    def failures(**given):
        return [name for name, _ in _held(**given).failures]

    assert failures() == []
    for change in (
        {"RelayId": "another"},  # not the id in the caller's 504
        {"IdempotencyKey": None},
        {"ErrorKind": "permanent"},
        {"QueuedBy": None},
        {"PossiblyDelivered": None},
        {"ErrorStatus": "503"},  # the last request got no status
        {"ErrorMessage": "lancepilot gave no answer in time"},
    ):
        assert set(failures(letters=[_held_letter(**change)])) == {"bad_dead_letters"}, change
    # Its last request was answered: it was held after something other than an unanswered send.
    assert "bad_dead_letters" in failures(answers=(None, 503), served=("hang", "503"))
    # Two letters that differ (here, in their reason) are no copy of one parking.
    dropped = f"lancepilot gave no answer: the connection dropped; {HELD_DETAIL}"
    other = _held_letter(ErrorMessage=dropped)
    assert set(failures(letters=[_held_letter(), other])) == {"bad_dead_letters"}
    for caller in (
        Answer(504, {"message": "no answer", "provider": "lancepilot", "id": "r"}, 10),
        Answer(503, {"id": "r"}, 10),
        _held_answer(provider="fluents"),
    ):
        assert failures(caller=caller) == ["wrong_answers"], caller


def test_the_same_dead_letter_twice_is_counted_as_a_copy_not_a_failure():
    # botocore retries a dead-letter send whose answer was late, and SQS may keep both
    # (test_parking.py): one parking, two identical letters.
    twice = _held(letters=[_held_letter(), _held_letter()])
    once = _held()

    assert (twice.state, twice.failures, twice.copies) == (once.state, (), 1)
    assert once.copies == 0
    assert judge(_item(), Trace([201], ["ok"])).copies == 0  # delivered: no letter at all


def test_a_synchronous_send_without_an_answer_but_no_dead_letter_is_lost():
    lost, resent = ["lost"], ["unexplained_duplicates", "lost"]
    # As if the parking failed (which the harness never causes): a 504 without "status":
    # "held", and the caller's retries sending it again (a resend, too) or giving up.
    for answers, served, caller, failures in (
        ([None], ["hang"], Answer(504, {"id": "r"}, 10), lost),
        ([None], ["hang"], _held_answer(), lost),  # told held, but nothing parked
        ([], ["reset before read"], _held_answer(), lost),
        ([None, 503, 503], ["hang", "503", "503"], Answer(503, {}, 10), resent),
        (
            [None, 400],
            ["reset after read", "4xx"],
            Answer(502, {"provider_status": 400}, 2),
            resent,
        ),
        # Unanswered to the relay, though never read: it cannot tell, so it must hold it.
        ([400], ["reset before read", "4xx"], Answer(502, {"provider_status": 400}, 2), resent),
    ):
        verdict = judge(_item("http sync"), Trace(answers, served, caller=caller))
        assert verdict.state is None
        assert [name for name, _ in verdict.failures] == failures, (served, caller)


def test_a_synchronous_message_sent_again_after_an_unanswered_send_is_an_unexplained_duplicate():
    told = Answer(201, {"provider_status": 201}, 2, (504, 201))
    item = _item("http sync", provider="fluents")  # whose 201 has no body to pass on
    verdict = judge(item, Trace([None, 201], ["hang", "ok"], caller=told))
    queued = judge(_item(), Trace([None, 201], ["hang", "ok"]))

    assert verdict.state == "delivered again"
    assert [name for name, _ in verdict.failures] == ["unexplained_duplicates"]
    assert queued.failures == ()  # an SQS redelivery may send again: at least once
    # After a reset before the read the provider has no copy, but the relay could not know:
    # sending again instead of holding is a resend all the same.
    reset = judge(item, Trace([201], ["reset before read", "ok"], caller=told))
    assert [name for name, _ in reset.failures] == ["unexplained_duplicates"]
    assert (reset.state, reset.duplicates) == ("delivered once", 0)


def test_the_plan_guarantees_a_synchronous_message_whose_first_request_goes_unanswered_is_held():
    def sync(first):
        return Planned(0, "rel-0000000", "http sync", "fluents", {}, False, False, ((first, 0),))

    assert expectations([sync("hang")]) == {
        "fault:hang": 1,
        "held:synchronous": 1,
        "state:ambiguous parked exhausted": 1,
    }
    assert expectations([sync("reset before read")]) == {
        "fault:reset before read": 1,
        "held:synchronous": 1,
        "state:parked exhausted": 1,
    }
    assert "held:synchronous" not in expectations([sync("503")])


def _dead_letter_problems(item, trace):
    return [text for name, text in judge(item, trace).failures if name == "bad_dead_letters"]


def test_parked_after_an_ambiguous_send_must_say_possibly_delivered():
    maybe = {"PossiblyDelivered": "true"}
    unflagged = Trace([None, 422], ["hang", "4xx"], [_letter("permanent", 422)])
    exhausted = Trace([None, 503], ["reset after read", "503"], [_letter("exhausted", 503)])
    clean = Trace([422], ["4xx"], [_letter("permanent", 422, **maybe)])
    # A reset before the request was read: the provider never had it, but the relay cannot
    # tell that from a reset after, so the flag is right there.
    reset = Trace([503], ["reset before read", "503"], [_letter("exhausted", 503, **maybe)])

    assert judge(_item(), unflagged).state is None
    assert any("without PossiblyDelivered" in p for p in _dead_letter_problems(_item(), unflagged))
    assert any("without PossiblyDelivered" in p for p in _dead_letter_problems(_item(), exhausted))
    assert any("no request went unanswered" in p for p in _dead_letter_problems(_item(), clean))
    assert judge(_item(exhausting=True), reset).failures == ()
    assert judge(_item(exhausting=True), reset).state == "parked exhausted"


def test_parked_or_refused_after_the_providers_2xx_arrived_fails():
    parked = judge(_item(), Trace([201], ["ok"], [_letter("exhausted")]))
    refused = judge(_item("http sync"), Trace([201], ["ok"], caller=Answer(504, {}, 10)))

    assert [name for name, _ in parked.failures] == ["failed_though_accepted"]
    assert [name for name, _ in refused.failures] == ["failed_though_accepted"]


def test_a_caller_left_without_a_final_answer_is_lost():
    verdict = judge(_item("http sync"), Trace([503] * 40, ["503"] * 40, caller=Answer(503, {}, 10)))

    assert verdict.state is None
    assert [name for name, _ in verdict.failures] == ["lost"]


def test_a_synchronous_caller_is_told_what_the_provider_answered():
    item = Planned(0, "rel-0000000", "http sync", "fluents", {}, False, False, (("2xx html", 0),))
    told = Answer(201, {"status": "delivered", "provider_status": 201}, 1)
    passed_on = Answer(201, {"provider_status": 201, "provider_response": {"x": 1}}, 1)

    assert judge(item, Trace([201], ["2xx html"], caller=told)).failures == ()
    # A body that is not a JSON object is not passed on as the provider's response.
    wrong = judge(item, Trace([201], ["2xx html"], caller=passed_on))
    assert [name for name, _ in wrong.failures] == ["wrong_answers"]


# --- the sandbox's fault machinery, as the harness uses it ---------------------------------------


@pytest.fixture
def fluents():
    with ProviderSandbox("fluents", "token") as sandbox:
        yield sandbox


def _send(sandbox, text="Order rel-0000001 has shipped"):
    body = {"to_number": "+14155550123", "from_number": "+12025550143", "message": text}
    return urllib3.request(
        "POST",
        f"{sandbox.base_url}/v1/messages",
        json=body,
        headers={"Authorization": "Bearer token"},
        retries=False,
    )


def test_a_chooser_sees_each_request_and_a_reset_before_read_is_not_recorded(fluents):
    seen = []

    def choose(request):
        seen.append(request.json["message"])
        return Fault.reset_before_read() if len(seen) == 1 else None

    fluents.set_chooser(choose)

    with pytest.raises(urllib3.exceptions.ProtocolError):
        _send(fluents)
    assert _send(fluents, "second").status == 201
    assert seen == ["Order rel-0000001 has shipped", "second"]
    assert [r.answered for r in fluents.received] == [201]


def test_retry_after_as_an_http_date_is_dated_when_answered(fluents):
    fault = Fault.status(429, {"message": "Too Many Attempts."}, retry_after_date_in=2)
    time.sleep(1.1)  # built first, answered later: the date must still be ahead
    fluents.enqueue(fault)

    answer = _send(fluents)

    assert answer.status == 429
    wait = urllib3.util.Retry().get_retry_after(answer)
    assert 1 <= wait <= 2


def test_truncated_json_is_a_complete_answer_that_does_not_parse(fluents):
    document = json.dumps({"id": "msg_01", "status": "queued"}).encode()
    fluents.enqueue(Fault.truncated_json(201, {"id": "msg_01", "status": "queued"}))

    answer = _send(fluents)

    assert answer.status == 201
    assert answer.headers["Content-Type"] == "application/json"
    assert document.startswith(answer.data)
    assert 0 < len(answer.data) < len(document)
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer.data)
