"""Floors: minimal hand-written handlers doing the relay's essential work with boto3 and urllib3.

Each floor is loaded by file path in its own process, as Lambda loads a handler (``app.py``),
and stands alone: nothing is shared between them or imported from this package.

What the floors do, per message, is what the relay must do on the happy path: read the secrets
(cached), check the caller (webhook), parse and minimally validate the message, take an
idempotency record in DynamoDB with the same conditional put as Powertools, POST the provider's
documented request with urllib3, and complete the record (or delete it, on failure).

What they skip, on purpose (the relay's cost over the floor includes all of it):

* Powertools: Logger (JSON logs with a correlation id), Metrics (EMF, cold start metric),
  Tracer (X-Ray segments, botocore patched, a subsegment per send), the idempotency utility
  (key hashing, payload validation hash, response hook);
* full number validation (``phonenumbers``): the floors check the E.164 shape only;
* Standard Webhooks signatures (the floors accept bearer keys only), content-type checks;
* retries with backoff and deadlines (``DeadlineRetry``): one attempt, bounded by timeouts;
* the webhook's ``Prefer: respond-async`` path (no SQS client). (On the happy path the relay,
  like the floors, takes the idempotency record with one conditional put and makes no read
  before the send: one record per key, whichever way the request went.)
* the delivery function's per-provider concurrency limits and remaining-time guard.
"""
