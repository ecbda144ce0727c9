"""What the agents do with each message, one module per concern.

Agents (``notifyd.stream.agents``) are thin loops over these handlers, so the logic is testable
with Faust's ``test_context()``:

* :mod:`.ingest`: an event arrives (validated, moved to its partition, de-duplicated);
* :mod:`.dispatch`: rules decide per channel, one delivery per channel;
* :mod:`.queueing`: a delivery is produced to its channel topic (and re-queued);
* :mod:`.deliver`: the channel agent calls the provider; retries, dead deliveries;
* :mod:`.inapp`: the in-app provider, the inbox table (and its listeners);
* :mod:`.schedule`: deferred deliveries, released when due by ``notifyd.stream.scheduler``;
* :mod:`.timers`: scheduled events and digest windows, fired when due (``notifyd.stream.timing``);
* :mod:`.status`: status updates (one builder) and their fold into the status table;
* :mod:`.control`, :mod:`.preferences`: housekeeping and the preferences table;
* :mod:`.deadletter`: where a record that cannot be handled goes.

Guarantees (README "Reliability"): processing is at-least-once.  Re-processing the
same Kafka record is harmless because every output is idempotent downstream: the
notification id is derived from ``(user_id, event_id)``, channel agents consult the
delivery ledger (``<notification_id>:<channel>``) before sending, providers get that
key as an idempotency key, and the status fold never moves a terminal state back.  A
*re-sent* event (same ``user_id`` and ``event_id``, another Kafka record) is dropped by
``seen``.  A record that cannot be handled ends in a dead-letter topic with a reason,
never in a log line only (:func:`.deadletter.dead_letter`,
:func:`.deadletter.dead_letter_failure`).
"""
