"""The provider-call stage: a whole batch of released notifications, sent at once, under the
providers' limits, with retries, fallback and a circuit breaker per provider.

The batch arrives from a Flink SQL window (Java collects it; Python is entered once per batch).
Per batch: expiry is checked against the wall clock, the ids are claimed in Redis in one round
trip (``udfs.markers``) that also reads the batch's users, templates and cancelled campaigns
(``udfs.lookups``: each key once, never a request per message). Then, per notification
(decisions in ``herald.preferences``, ``herald.templates``, ``herald.quiet_hours``):

* its campaign was cancelled → ``cancelled``, never sent (checked again between rounds, and on
  every retry, which comes back through here);
* contacts: inline ``to`` first, gaps filled from the user record;
* a named template is rendered for the user's locale; a missing variable or template →
  ``failed`` and a dead letter with the precise reason (no fallback: every channel would send
  the same blank);
* a channel the user opted out of → ``opted_out`` and the next channel, or nothing more;
* inside the user's quiet hours (promotional; critical too unless
  ``quiet_hours_bypass_critical``) → held until they end, or ``expired`` if it expires first.
  The hold goes round the class's retry topic with ``not_before`` = the end (a ``retrying``
  event says so) and waits in the retry wait's timers (``operators.retries``), not in the
  gate: the gate never sees the user record (it is read here, batched, where the contacts are
  needed), its per-partition state would carry every held campaign message through each
  access, and the retry path already holds records durably (Kafka, then keyed state with
  timers) and brings them back through these checks, so a cancel, a changed preference or an
  expiry during the hold is honoured at release.

Then rounds run until every notification has a fate:

1. requests are built by the provider adapters (no contact for a channel → fallback), each
   with the notification's ``expires_at`` less ``provider_write_margin_ms`` (the trip to the
   provider) as its deadline;
2. a provider whose circuit is open gets no calls: a notification with another usable channel
   moves to it at once (``fallback``, the circuit named), one without waits, re-queued for
   when the provider may be probed (``retrying``, no attempt used), or ``expired`` if that is
   too late; a half-open one gets one probe call first;
3. tokens are taken from the Redis buckets per (provider, tenant), critical traffic with the
   critical lane; calls without tokens wait in the operator (backpressure, never a drop);
4. the calls go out concurrently (HTTP/1.1 and HTTP/2), one user's calls chained in order, and
   a user's chain stops behind a throttled or failed call. No request is written at or after
   its deadline, wherever it waited (behind the user's earlier call, for a connection): it is
   ``expired`` with the stage in ``detail``; a written one whose answer has not come by then
   is abandoned and ``expired`` too (written, not answered: the provider may have it);
5. each answer is classified: OK → ``delivered`` (whenever the answer came: the provider
   accepted a request written in time); THROTTLED → AIMD lowers the provider's rate
   and holds it for the Retry-After, and the call waits in the operator and goes again (or, for
   a Retry-After beyond ``throttle_inline_max_ms``, round the retry topic); RETRYABLE →
   recorded by the breaker for the whole round first; then, if the round opened the circuit
   (or a probe failed), the next usable channel now, or with none ``retrying`` with backoff
   and no attempt used; else ``retrying`` with backoff and jitter onto the retry topic if
   ``herald.retry.TimeLeftPolicy`` says the later channels keep their time after it, else the
   next channel now (``out_of_time``); attempts used up, the channel has failed; PERMANENT → the channel has failed. A failed channel falls
   back to the next one (``fallback``) in the same batch; after the last one, ``failed`` and
   one dead letter with the reason and the attempt history. Expired at any point →
   ``expired``.

The claims are settled after every round, in one round trip: ``sent`` for what a provider
accepted, released for what left the batch otherwise (re-queued, expired, dead-lettered), so a
retry later is a fresh claim. Settling per round, not per batch, matters once a batch waits for
tokens for seconds: a crash then re-sends only the calls of the round in flight, not every call
the batch made before it. A batch's last settle rides in the next batch's claim (or goes with
``flush``): the gate sends a large batch in parts (``begin``/``complete``), and a round trip
per part for the settle alone was waiting it could not use.

What a retry does to per-user order: inside a batch, a user's calls are chained and the chain
stops at a throttled or failed call, so the user's later messages of that batch wait behind it
(inline for a throttle; for a retry they go onto the retry topic right behind it, same key, same
``not_before``, and come back in order). Messages of that user released by the gate *after*
that batch do not wait for the retry: they may reach the provider before it. Holding a user's
whole stream behind one message's backoff would let one bad token or one flaky provider delay
everything else the user gets (an OTP behind a marketing push), so Herald keeps order for what
it sends together and lets a retried message fall behind. Fallbacks run in the same batch, so a
message that moves to SMS is not overtaken by one released later.

State: the circuit breakers and the AIMD rates are per operator instance (each class's call
stage has its own); the token buckets, quotas and holds are in Redis and shared by all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

from herald import preferences, retry as policy
from herald import states
from herald.breaker import CLOSED, CircuitBreakers
from herald.metrics import count_statuses
from herald.models import Content, Notification, Status, dead_letter
from herald.providers.base import Kind, clock_ms
from herald.providers.exceptions import MissingContactError, ProviderError
from herald.providers.registry import Registry
from herald.receipts import CONTACT_OF_CHANNEL, contact_sha1
from herald.retry import Attempt, ExponentialBackoffRetry, FallbackPolicy, TimeLeftPolicy
from herald.quiet_hours import utc_iso
from herald.redis_conn import redis_client
from herald.settings import Settings
from herald.templates import TemplateCache, TemplateError
from udfs.http_client import (BEHIND_CHAIN, BODY_HELD, CONNECTING, IN_QUEUE, ChainHalted,
                              ConnectionTurnedAway, DeadlineTimeout, HttpClientError,
                              PastDeadline)
from udfs.lookups import BatchLookups, cancelled_campaigns
from udfs.markers import SentMarkers, marker
from udfs.rates import ProviderRates
from udfs.requeue import Task, encode_retry
from udfs.transport import make_transport

ACCEPTED_BEFORE_RESTART = "accepted by the provider before a restart (sent marker); not sent again"
RESENT_AFTER_CRASH = "in flight at a crash; re-sent (at-least-once for the ambiguous call)"
# An expired notification whose claim a crash left in flight: never sent again, and its
# `expired` says the provider may have it.
EXPIRED_IN_FLIGHT = "; a call in flight at a crash may have reached the provider"
MAX_WAIT_S = 0.5  # longest single sleep while waiting for tokens (expiry is re-checked after)
# A call whose new connection was turned away while others to the provider work (the client's
# ConnectionTurnedAway): not a provider fault. It goes again in the batch's next round, on a
# working connection, with no attempt used and nothing for the breaker, this many times per
# notification; then it is a provider fault like any lost connection.
TURNED_AWAY = "turned_away"  # its outcome in the attempt history
MAX_TURNED_AWAY = 3
RESENT_AFTER_TURNED_AWAY = ("re-sent after a new connection to {} was turned away (written, "
                            "most likely unread: at-least-once for the ambiguous call)")


def stops_chain(result) -> bool:
    """A user's later calls must not overtake this one: it will be sent again. One past its
    deadline never is (it is ``expired``), so the user's later calls go on."""
    if isinstance(result, HttpClientError):
        return not isinstance(result, PastDeadline)
    return result.status == 429 or result.status >= 500


# Status details for a call whose deadline (expires_at) passed before it was written, by stage.
NOT_WRITTEN = {
    BEHIND_CHAIN: "expired while waiting behind an earlier call of the same user",
    IN_QUEUE: "expired while waiting for a free connection to {}",
    CONNECTING: "expired while a connection to {} was being opened",
    BODY_HELD: "expired while {}'s flow control held the request's body (never completed)",
}
NOT_WRITTEN_OTHER = "expired before the request to {} could be written"


@dataclass
class StageOutput:
    """What one batch produced: status events, retry records, dead letters."""
    statuses: list[Status] = field(default_factory=list)
    retries: list[tuple[str, bytes]] = field(default_factory=list)   # (user_id, record)
    dead: list[tuple[str, bytes]] = field(default_factory=list)      # (id, record)
    throttles: int = 0  # throttling answers in this batch (the calls waited and went again)
    # Ids whose claim is released at the end of the round: they left the batch without an
    # accepted call (re-queued, expired, dead-lettered), so a later try is a fresh claim.
    unclaim: list[str] = field(default_factory=list, repr=False)

    def metric_counts(self):
        """(counter increments, provider latencies) of this batch, for the operator's metrics."""
        return count_statuses(self.statuses, dead=len(self.dead), throttles=self.throttles)

    def __iter__(self):  # (statuses, retries, dead), for unpacking
        return iter((self.statuses, self.retries, self.dead))


class BatchCalls:
    """Send a batch of notifications (in per-user order); report what became of each."""

    def __init__(self, settings: Settings, priority: str = states.CRITICAL,
                 registry: Registry | None = None, *, sleep=time.sleep, pause=None):
        s = settings
        self.settings = settings
        self.critical = priority == states.CRITICAL
        self.registry = registry or Registry()
        self.transport = make_transport(s)
        self.redis = redis_client(s)  # one server or Redis Cluster (herald.redis_conn)
        self.markers = SentMarkers(self.redis, s.dedup_ttl_ms)
        self.rates = ProviderRates(s, self.redis)
        self.retry = ExponentialBackoffRetry(max_attempts=s.retry_max_attempts,
                                             initial_delay_ms=s.retry_initial_delay_ms,
                                             max_delay_ms=s.retry_max_delay_ms,
                                             multiplier=s.retry_multiplier)
        self.fallback = FallbackPolicy()
        self.time_left = TimeLeftPolicy(reserve_ms=s.fallback_reserve_ms)
        self.breakers = CircuitBreakers(failure_threshold=s.breaker_failure_threshold,
                                        cool_down_ms=s.breaker_cool_down_ms)
        self.templates = TemplateCache(s.template_cache_entries)
        self.sleep = sleep
        # Called between steps of a batch; a promotional stage waits there while critical work
        # runs in the same interpreter (operators/threads.py).
        self.pause = pause or (lambda: 0.0)
        self.waited_ms = 0  # time spent waiting for tokens (backpressure), for tests and metrics

    def close(self) -> None:
        self.transport.close()
        self.redis.close()

    # ---------------------------------------------------------------- the batch

    def send_all(self, batch: Sequence[Task | Notification]) -> StageOutput:
        out = self.complete(self.begin(batch))
        self.flush()
        return out

    def begin(self, batch: Sequence[Task | Notification]) -> "Flight":
        """Claim, look up and prepare the batch, and start its first round of calls; the
        provider works on them while the caller goes on (``complete`` waits for them). Batches
        begun together must not share a user: chains (per-user order) are per batch."""
        out = StageOutput()
        at = clock_ms()
        tasks, marks, expired = [], set(), []
        for i, item in enumerate(batch):
            task = item if isinstance(item, Task) else Task.fresh(item)
            task.order = i
            task.mark = marker(task.n)
            if task.mark in marks:
                continue  # two copies in one batch (a replayed retry record): one is enough
            marks.add(task.mark)
            (expired if task.n.is_expired(at) else tasks).append(task)
        if expired:
            self._expired_before_call(expired, at, out)
        lookups = BatchLookups()
        s = self.settings
        self.pause()
        for task in tasks:
            lookups.want(task.n, user=preferences.needs_user(
                task.n, critical_opt_outs=s.critical_honours_opt_outs,
                critical_quiet_hours=not s.quiet_hours_bypass_critical))
        sent_before, in_flight_at_crash = self.markers.claim([t.n for t in tasks],
                                                             lookups=lookups)
        out.unclaim.extend(t.mark for t in tasks if t.mark in sent_before)
        waiting = []
        for task in tasks:
            self.pause()
            if task.mark in sent_before:
                # A replay after a restore (or a redrive of something delivered): the provider
                # has it, and the status that said so may have died with the crash.
                out.statuses.append(Status.of(task.n, states.DELIVERED, at, channel=task.channel,
                                              detail=ACCEPTED_BEFORE_RESTART))
            elif self._prepare(task, lookups, at, out):
                waiting.append(task)
        self.rates.refresh()
        first = self._launch(waiting, out) if waiting else None
        return Flight(out, in_flight_at_crash, first)

    def complete(self, flight: "Flight") -> StageOutput:
        """Run ``flight``'s rounds until every notification has a fate. Its last claims are
        settled with the next ``begin``'s claim or by ``flush``, which the caller runs before
        it lets a checkpoint pass (earlier rounds settle before the next round's calls)."""
        out, step = flight.out, flight.first
        while step is not None:
            accepted: list[str] = []
            waiting = self._land(step, flight.crashed, accepted, out)
            self.markers.settle(accepted, out.unclaim, now=False)
            out.unclaim = []
            if waiting:
                waiting = self._drop_cancelled(waiting, out)
            step = None
            if waiting:
                self.markers.flush()
                self.pause()
                step = self._launch(waiting, out)
        if out.unclaim:
            self.markers.settle((), out.unclaim, now=False)
            out.unclaim = []
        return out

    def flush(self) -> None:
        """Send the settles that wait (``complete``)."""
        self.markers.flush()

    def poll(self) -> None:
        """Let begun batches' answers in and their waiting requests out, without blocking."""
        self.transport.poll()

    # ---------------------------------------------------------------- the user's side

    def _prepare(self, task: Task, lookups: BatchLookups, now: int, out: StageOutput) -> bool:
        """Apply what the batch's lookups say about ``task``: a cancelled campaign, the user's
        contacts, the template, opt-outs and quiet hours. False: it has its fate already."""
        n = task.n
        if lookups.is_cancelled(n):
            self._cancelled(task, now, out)
            return False
        key = (n.tenant_id, n.user_id)
        if key in lookups.users:
            task.user = lookups.users[key]
            task.no_user = task.user is None
        task.contacts = preferences.contacts_for(n.to, task.user)
        task.message = n
        if n.content.template is not None:
            try:
                task.message = self._render(task, lookups.templates.get(
                    (n.tenant_id, n.content.template)))
            except TemplateError as exc:
                self._dead(task, str(exc), now, out, channel=task.channel, provider=None)
                return False
        if task.user is not None and not self._allowed_channel(task, now, out):
            return False
        hold = preferences.quiet_hold(n, task.user, now,
                                      bypass_critical=self.settings.quiet_hours_bypass_critical)
        if hold is None:
            return True
        decision, until = hold
        q = task.user.quiet_hours
        why = f"the user's quiet hours ({q.start}-{q.end} {q.tz}) end at {utc_iso(until)}"
        if decision == preferences.EXPIRE:
            self._expired(task, now, f"{why}, after expires_at", out)
        else:  # round the retry topic; the retry wait's timers release it at `until`
            self._defer(task, now, until, f"held: {why}", out)
        return False

    def _render(self, task: Task, raw: bytes | None) -> Notification:
        n = task.n
        if raw is None:
            raise TemplateError(f"template {n.content.template!r} does not exist for tenant "
                                f"{n.tenant_id!r}")
        template = self.templates.get(raw, n.content.template)
        title, body = template.render(task.user.locale if task.user else None, n.content.vars,
                                      preferences.user_values(n.user_id, task.user))
        return replace(n, content=Content(title=title, body=body, data=n.content.data))

    def _allowed_channel(self, task: Task, now: int, out: StageOutput) -> bool:
        """Skip the channels the user opted out of (``opted_out`` each), from the current one
        to the next allowed one; False when none is left (the notification ends there)."""
        skipped, channel = preferences.skip_opted_out(task.n.channels, task.channel,
                                                      task.user.opt_outs)
        for ch in skipped:
            detail = (f"the user opted out of {ch}; trying {channel}" if channel is not None
                      else f"the user opted out of {ch}; no channel left")
            out.statuses.append(Status.of(task.n, states.OPTED_OUT, now, channel=ch,
                                          attempt=task.attempt, detail=detail))
        if channel is None:
            out.unclaim.append(task.mark)
            return False
        if channel != task.channel:
            task.channel, task.attempt = channel, 1
        return True

    def _drop_cancelled(self, waiting: list[Task], out: StageOutput) -> list[Task]:
        """Between rounds (a batch may wait seconds for tokens): drop what was cancelled since."""
        campaigns = [(t.n.tenant_id, t.n.campaign_id) for t in waiting if t.n.campaign_id]
        gone = cancelled_campaigns(self.redis, campaigns) if campaigns else ()
        if not gone:
            return waiting
        now = clock_ms()
        kept = []
        for task in waiting:
            if (task.n.tenant_id, task.n.campaign_id) in gone:
                self._cancelled(task, now, out)
            else:
                kept.append(task)
        return kept

    def _cancelled(self, task: Task, now: int, out: StageOutput) -> None:
        out.unclaim.append(task.mark)
        out.statuses.append(Status.of(task.n, states.CANCELLED, now, channel=task.channel,
                                      attempt=task.attempt,
                                      detail=f"campaign {task.n.campaign_id!r} was cancelled"))

    # ---------------------------------------------------------------- rounds

    def _launch(self, waiting: list[Task], out: StageOutput) -> "Round":
        """One pass over what is left: start the calls that may go now."""
        now = clock_ms()
        later: list[Task] = []
        ready: list[Task] = []
        for task in waiting:
            if task.n.is_expired(now):
                self._expired(task, now, "expired while waiting to be sent", out)
                continue
            if task.request is None and not self._build(task, now, out, later):
                continue
            ready.append(task)

        # Circuit breakers: open → the next channel now, or wait for the provider;
        # half-open → one probe goes first, alone.
        by_provider: dict[str, list[Task]] = {}
        for task in ready:
            by_provider.setdefault(task.adapter.name, []).append(task)
        allowed: list[Task] = []
        for name, group in by_provider.items():
            breaker = self.breakers[name]
            if breaker.state == CLOSED:
                allowed.extend(group)
            elif breaker.allow():
                allowed.append(group[0])
                later.extend(group[1:])
            else:
                for task in group:
                    self._provider_down(task, name, "", now, out, later, called=False)

        allowed = in_turn(allowed, later)
        # Tokens, per (provider, tenant), in order: the granted head of each group goes now.
        groups: dict[tuple[str, str], list[Task]] = {}
        for task in allowed:
            groups.setdefault((task.adapter.name, task.n.tenant_id), []).append(task)
        self.rates.prepare_tenants(groups)
        # One round trip per provider for all its tenants' takes.
        tenants_of: dict[str, list[tuple[str, int]]] = {}
        for name, tenant in groups:
            tenants_of.setdefault(name, []).append((tenant, len(groups[(name, tenant)])))
        grants = {(name, tenant): grant for name, takes in tenants_of.items()
                  for (tenant, _), grant in zip(takes, self.rates.take_many(
                      name, takes, critical=self.critical))}
        go: list[Task] = []
        min_wait = None
        for key, group in groups.items():
            grant = grants[key]
            go.extend(group[:grant.granted])
            if grant.granted < len(group):
                later.extend(group[grant.granted:])
                min_wait = grant.wait_ms if min_wait is None else min(min_wait, grant.wait_ms)
        go = in_turn(go, later)  # behind a call of the same user still waiting for tokens
        if not go:
            return Round(go, later, None, min_wait)
        return Round(go, later, self.transport.start([t.request for t in go],
                                                     self.settings.provider_max_in_flight,
                                                     keys=[t.chain for t in go],
                                                     stop_chain=stops_chain), min_wait)

    def _land(self, step: "Round", crashed: set[str], accepted: list[str],
              out: StageOutput) -> list[Task]:
        """Wait for a round's answers and give each call its fate; return what must wait."""
        go, later = step.go, step.later
        if step.calls is None:
            if later and step.min_wait is not None:
                pause = min(max(step.min_wait, 1) / 1000.0, MAX_WAIT_S)
                self.sleep(pause)  # backpressure: the operator blocks, nothing is dropped
                self.waited_ms += int(pause * 1000)
            return self._in_order(later)
        answers = self.transport.wait(step.calls)
        done = clock_ms()
        halted: list[Task] = []
        # (tenant, user) → fate of the call their later calls wait on
        behind: dict[tuple[str, str], tuple[str, int | None]] = {}
        throttled: dict[str, int] = {}  # provider → longest Retry-After among this round's 429s
        failed: list[tuple[Task, object]] = []  # RETRYABLE, decided once the round is recorded
        for task, answer in zip(go, answers):
            if isinstance(answer, HttpClientError):
                if isinstance(answer, ChainHalted):
                    halted.append(task)
                    continue
                if isinstance(answer, PastDeadline):
                    self._past_deadline(task, answer, done, out)
                    continue
                if isinstance(answer, ConnectionTurnedAway) and self._turned_away(
                        task, answer, done, later, behind):
                    continue
            outcome = self._answered(task, answer, done, crashed, accepted, out, later, behind,
                                     throttled)
            if outcome is not None:
                failed.append((task, outcome))
        # The round's faults are one signal: if they opened the circuit, each of its failed
        # calls is decided knowing that, whatever its place in the round.
        for task, outcome in failed:
            self._retryable(task, outcome, done, out, later, behind)
        for name, retry_after_ms in throttled.items():
            # One decrease and one hold per provider and round: the 429s of calls that were in
            # flight together are one signal, not one each.
            self.rates.on_throttle(name, retry_after_ms)
        for task in halted:
            fate, not_before = behind.get(task.chain, ("wait", None))
            if fate == "requeue":
                self._defer(task, done, not_before,
                            "waits behind an earlier message of the same user", out)
            else:
                later.append(task)
        return self._in_order(later)

    @staticmethod
    def _in_order(tasks: list[Task]) -> list[Task]:
        tasks.sort(key=lambda t: t.order)
        return tasks

    # ---------------------------------------------------------------- one task

    def _build(self, task: Task, now: int, out: StageOutput, later: list[Task]) -> bool:
        if task.user is not None and not self._allowed_channel(task, now, out):
            return False  # a fallback landed on a channel the user opted out of, and no other
        contacts = task.contacts if task.contacts is not None else task.n.to
        try:
            task.adapter = self.registry.for_channel(task.channel, contacts.platform)
            task.request = task.adapter.build_request(task.message or task.n, contacts,
                                                      self.settings, now_ms=now)
            # never written so late that it could reach the provider at or after expires_at;
            # its answer awaited until expires_at (so a user's next call is written no sooner
            # than the trip after it, and an OK answer in time is `delivered`)
            task.request.deadline = task.n.expires_at - self.settings.provider_write_margin_ms
            task.request.answer_by = task.n.expires_at
            return True
        except MissingContactError as exc:
            failure, detail = policy.MISSING_CONTACT, str(exc)
            if task.no_user:
                detail += (f" (none inline, and no user {task.n.user_id!r} in the user store "
                           f"of tenant {task.n.tenant_id!r})")
        except ProviderError as exc:
            failure, detail = policy.PERMANENT, str(exc)
        provider = task.adapter.name if task.adapter is not None else None
        task.remember(Attempt(task.channel, provider or "-", task.attempt, now, failure,
                              detail).to_dict())
        self._channel_failed(task, failure, detail, now, out, later, provider)
        return False

    def _answered(self, task: Task, answer, now: int, crashed: set[str], accepted: list[str],
                  out: StageOutput, later: list[Task], behind: dict, throttled: dict):
        """Classify ``answer`` and give ``task`` its fate; a RETRYABLE outcome is recorded by
        the breaker and returned instead, for ``_retryable`` once the round is recorded."""
        adapter = task.adapter
        name = adapter.name
        if isinstance(answer, HttpClientError):
            outcome = adapter.transport_error(answer)
        else:
            outcome = adapter.classify(answer.status, answer.headers, answer.body)
        if outcome.kind is not Kind.OK:  # the history is for retries and dead letters
            task.remember(Attempt(task.channel, name, task.attempt, now, outcome.kind.value,
                                  outcome.detail, outcome.status).to_dict())
        breaker = self.breakers[name]
        user = task.chain
        if outcome.kind is not Kind.RETRYABLE and breaker.state != CLOSED:
            breaker.record_success()  # a probe answered: the provider is up, whatever it said
        if outcome.kind is Kind.OK:
            breaker.record_success()
            self.rates.on_success(name)
            accepted.append(task.mark)
            detail = RESENT_AFTER_CRASH if task.mark in crashed else None
            if detail is None and task.history and \
                    task.history[-1].get("outcome") == TURNED_AWAY:
                detail = RESENT_AFTER_TURNED_AWAY.format(name)
            out.statuses.append(Status.of(task.n, states.DELIVERED, now, channel=task.channel,
                                          provider=name, attempt=task.attempt,
                                          latency_ms=now - task.n.created_at, detail=detail,
                                          provider_message_id=outcome.message_id))
            return
        if outcome.kind is Kind.THROTTLED:
            out.throttles += 1
            retry_after_ms = int((outcome.retry_after_s or 0) * 1000)
            throttled[name] = max(throttled.get(name, 0), retry_after_ms)
            if retry_after_ms <= self.settings.throttle_inline_max_ms:
                task.request = None  # rebuilt next round (TTLs count down)
                later.append(task)
                behind[user] = ("wait", None)
                return
            decision = self.retry.next_retry(task.attempt, now, task.n.expires_at,
                                             retry_after_ms=retry_after_ms, throttled=True)
            if decision.retry:
                self._defer(task, now, decision.at_ms,
                            f"{name} throttled: {outcome.detail}", out, provider=name)
                behind[user] = ("requeue", decision.at_ms)
            else:
                self._expired(task, now, f"{name} throttled until after expires_at", out)
                behind[user] = ("wait", None)
            return
        if outcome.kind is Kind.RETRYABLE:
            breaker.record_failure()
            return outcome
        detail = outcome.detail + (" (recipient's token/number/address is invalid)"
                                   if outcome.token_invalid else "")
        self._channel_failed(task, policy.PERMANENT, detail, now, out, later, name,
                             **(dead_contact(task) if outcome.token_invalid else {}))
        behind[user] = ("wait", None)
        return None

    def _turned_away(self, task: Task, answer: ConnectionTurnedAway, now: int,
                     later: list[Task], behind: dict) -> bool:
        """Send the call again in the next round (its user's later calls wait behind it), with
        no attempt used and nothing recorded by the breaker; False once it has been turned
        away ``MAX_TURNED_AWAY`` times (then it is a provider fault)."""
        history = task.history
        if sum(1 for h in history if h.get("outcome") == TURNED_AWAY) >= MAX_TURNED_AWAY:
            return False
        task.remember(Attempt(task.channel, task.adapter.name, task.attempt, now, TURNED_AWAY,
                              str(answer)).to_dict())
        task.request = None  # rebuilt next round (TTLs count down)
        later.append(task)
        behind[task.chain] = ("wait", None)
        return True

    def _retryable(self, task: Task, outcome, now: int, out: StageOutput, later: list[Task],
                   behind: dict) -> None:
        """A provider fault: the next channel now if its circuit is open now, else retry here
        or fall back now, by attempts and by the time left."""
        name = task.adapter.name
        user = task.chain
        # This round opened the circuit, or a probe failed: the provider is down.
        down = self.breakers[name].state != CLOSED
        if down and self._channels_after(task):
            self._provider_down(task, name, f" after {outcome.detail}", now, out, later)
            behind[user] = ("wait", None)
            return
        n = task.n
        retry_after_ms = (int(outcome.retry_after_s * 1000)
                          if outcome.retry_after_s is not None else None)
        # Nothing else to try while the provider is down: retried with the usual backoff (so
        # the retries reach the retry stage spread out and trip its own breaker, not all at
        # the probe time), without using up an attempt, as throttles do not.
        decision = self.retry.next_retry(task.attempt, now, n.expires_at,
                                         retry_after_ms=retry_after_ms, throttled=down)
        if decision.action != policy.GIVE_UP_EXHAUSTED and now < n.expires_at:
            left = self._channels_after(task)
            if self.time_left.decide(left, n.expires_at - now,
                                     decision.delay_ms) == policy.FALL_BACK:
                when = (f"a retry in {decision.delay_ms} ms" if decision.retry
                        else "no retry before expires_at")
                self._channel_failed(
                    task, policy.OUT_OF_TIME,
                    f"{outcome.detail}; {when} would leave less than "
                    f"{self.time_left.reserve_ms} ms for each of the {left} later channel(s)",
                    now, out, later, name)
                behind[user] = ("wait", None)
                return
        if decision.retry:
            tried = task.attempt
            if not down:
                task.attempt += 1
            why = "; circuit open, no attempt used" if down else ""
            self._defer(task, now, decision.at_ms, f"{name}: {outcome.detail}{why}", out,
                        provider=name, attempt=tried)
            behind[user] = ("requeue", decision.at_ms)
        elif decision.action == policy.GIVE_UP_EXPIRED:
            self._expired(task, now, f"{name}: {outcome.detail}; no retry before expires_at",
                          out)
            behind[user] = ("wait", None)
        else:
            self._channel_failed(task, policy.EXHAUSTED,
                                 f"{task.attempt} attempts, last: {outcome.detail}", now,
                                 out, later, name)
            behind[user] = ("wait", None)

    def _provider_down(self, task: Task, name: str, why: str, now: int, out: StageOutput,
                       later: list[Task], *, called: bool = True) -> None:
        """``name``'s circuit is open: the next usable channel now, or wait for the provider
        (no attempt used: the outage is the provider's, not the message's). ``called``: the
        task's call was made (and is in its history already)."""
        if self._channels_after(task):
            if not called:
                task.remember(Attempt(task.channel, name, task.attempt, now, policy.UNAVAILABLE,
                                      "circuit open").to_dict())
            self._channel_failed(task, policy.UNAVAILABLE,
                                 f"circuit open for {name} (provider faults){why}", now, out,
                                 later, name)
            return
        wait = max(self.breakers[name].retry_in_ms(), 1)
        self._defer(task, now, now + wait, f"circuit open for {name} (provider faults){why}; "
                    f"probing again in {wait} ms; no attempt used", out, provider=name)

    def _channels_after(self, task: Task) -> int:
        """How many of the channels after the current one could be used: not opted out, and
        with a contact where the contacts are known."""
        channels = task.n.channels
        rest = channels[list(channels).index(task.channel) + 1:]
        if not rest:
            return 0
        opt_outs = task.user.opt_outs if task.user is not None else ()
        contacts = task.contacts
        return sum(1 for ch in rest if ch not in opt_outs and
                   (contacts is None or preferences.has_contact(contacts, ch)))

    def _past_deadline(self, task: Task, answer: PastDeadline, now: int,
                       out: StageOutput) -> None:
        """``expires_at`` came before the call's answer: ``expired``, never retried. The
        breaker records nothing: no answer within less than a timeout says nothing about the
        provider's health."""
        name = task.adapter.name
        if isinstance(answer, DeadlineTimeout):
            # Written in time, no answer by expires_at: the provider may have it. Its claim is
            # left as it is, "in flight" (not released: that would say it was never sent; not
            # marked sent: the provider may not have it), as for a call in flight at a crash.
            # Nothing expired is sent again, so the claim cannot hold a send back; it lapses
            # with dedup_ttl_ms.
            out.statuses.append(Status.of(
                task.n, states.EXPIRED, now, channel=task.channel, provider=name,
                attempt=task.attempt,
                detail=f"written to {name}, no answer before expires_at (the provider may "
                       f"have it)"))
            return
        detail = NOT_WRITTEN.get(getattr(answer, "stage", None), NOT_WRITTEN_OTHER)
        self._expired(task, now, detail.format(name), out)

    def _channel_failed(self, task: Task, failure: str, detail: str, now: int,
                        out: StageOutput, later: list[Task], provider: str | None,
                        **dead: str) -> None:
        """This channel is done for: the next one in ``channels``, or the dead-letter queue.
        ``dead``: the contact the provider called dead (``dead_contact``), on the status."""
        failed_channel = task.channel
        following = self.fallback.next_channel(task.n.channels, failed_channel, failure)
        if following is not None:
            out.statuses.append(Status.of(
                task.n, states.FALLBACK, now, channel=failed_channel, provider=provider,
                attempt=task.attempt,
                detail=f"{failed_channel} failed ({failure}: {detail}); trying {following}",
                **dead))
            task.channel, task.attempt = following, 1
            task.adapter = task.request = None
            later.append(task)
            return
        reason = (f"every channel failed; last: {failed_channel} ({failure}: {detail})"
                  if len(task.n.channels) > 1 else f"{failed_channel} failed ({failure}: {detail})")
        self._dead(task, reason, now, out, channel=failed_channel, provider=provider, **dead)

    def _dead(self, task: Task, reason: str, now: int, out: StageOutput, *, channel: str,
              provider: str | None, **dead: str) -> None:
        """``failed`` and one dead letter with the reason and the attempt history."""
        out.unclaim.append(task.mark)
        out.statuses.append(Status.of(task.n, states.FAILED, now, channel=channel,
                                      provider=provider, attempt=task.attempt, detail=reason,
                                      **dead))
        record = task.n.to_dict()
        record["attempts"] = task.history
        out.dead.append((task.n.id, dead_letter(record, reason, states.STAGE_DELIVERY, now)))

    def _defer(self, task: Task, now: int, not_before: int, detail: str, out: StageOutput, *,
               provider: str | None = None, attempt: int | None = None) -> None:
        """Onto the retry topic, to come back at ``not_before``; ``retrying`` says so."""
        if not_before >= task.n.expires_at:
            self._expired(task, now, f"{detail}; not before expires_at", out)
            return
        task.step += 1
        out.unclaim.append(task.mark)
        out.statuses.append(Status.of(task.n, states.RETRYING, now, channel=task.channel,
                                      provider=provider or (task.adapter.name if task.adapter
                                                            else None),
                                      attempt=task.attempt if attempt is None else attempt,
                                      detail=f"{detail}; next try at {not_before}"))
        out.retries.append((task.n.user_id, encode_retry(task, not_before)))

    def _expired_before_call(self, expired: list[Task], at: int, out: StageOutput) -> None:
        """Expired before the provider call. One a provider accepted before a restart (its
        `sent` marker: a replay, or a retry record read again) stays ``delivered``, as its
        first status said: an ``expired`` after it would deny the delivery."""
        sent, in_flight = self.markers.sent([t.n for t in expired])
        for task in expired:
            if task.mark in sent:
                out.statuses.append(Status.of(task.n, states.DELIVERED, at,
                                              channel=task.channel,
                                              detail=ACCEPTED_BEFORE_RESTART))
            else:
                self._expired(task, at, "expired before the provider call" + (
                    EXPIRED_IN_FLIGHT if task.mark in in_flight else ""), out)

    def _expired(self, task: Task, now: int, detail: str, out: StageOutput) -> None:
        out.unclaim.append(task.mark)
        out.statuses.append(Status.of(task.n, states.EXPIRED, now, channel=task.channel,
                                      attempt=task.attempt, detail=detail))


def dead_contact(task: Task) -> dict[str, str]:
    """The contact a provider called dead, for the status event: its name and sha1 (the
    status consumer removes it from the user record if the record still holds it)."""
    contacts = task.contacts if task.contacts is not None else task.n.to
    name = CONTACT_OF_CHANNEL.get(task.channel)
    value = getattr(contacts, name, None) if name else None
    return {"invalid_contact": name, "contact_sha1": contact_sha1(value)} if value else {}


def in_turn(tasks: list[Task], later: list[Task]) -> list[Task]:
    """What of ``tasks`` may go this round, in order, so that each user's calls reach the
    providers in their order whatever the channel: a call behind one of the same user that
    waits in ``later`` (a fallback, tokens, a probe) waits too, and a user's calls go over one
    protocol per round (the transport chains a user's calls within a protocol, so an APNs
    call and an HTTP/1.1 one of the same user would overtake each other). The rest joins
    ``later``."""
    waiting: dict[tuple[str, str], int] = {}  # chain → order of its first call that waits
    for task in later:
        if task.order < waiting.get(task.chain, task.order + 1):
            waiting[task.chain] = task.order
    protocol: dict[tuple[str, str], bool] = {}
    kept = []
    for task in sorted(tasks, key=_order):
        chain = task.chain
        first = waiting.get(chain)
        if ((first is not None and first < task.order)
                or protocol.setdefault(chain, task.request.http2) != task.request.http2):
            later.append(task)
            if first is None or task.order < first:
                waiting[chain] = task.order
            continue
        kept.append(task)
    return kept


def _order(task: Task) -> int:
    return task.order


def split_by_user(notes: Sequence[Notification], part_size: int) -> list[list[Notification]]:
    """Consecutive parts of about ``part_size`` notifications (0: one part), in order, each
    user's notifications all in one part: parts begun together may be in flight at once, and a
    user's calls are chained only within a batch. A user goes to the part that is filling when
    they first appear, so earlier records go out first."""
    if part_size <= 0 or len(notes) <= part_size:
        return [list(notes)] if notes else []
    parts: list[list[Notification]] = [[]]
    part_of: dict[tuple[str, str], int] = {}
    for n in notes:
        user = (n.tenant_id, n.user_id)
        i = part_of.get(user)
        if i is None:
            if len(parts[-1]) >= part_size:
                parts.append([])
            i = part_of[user] = len(parts) - 1
        parts[i].append(n)
    return parts


@dataclass
class Round:
    """One round's calls under way (``calls``: what the transport's ``start`` returned, for its
    ``wait``; None when no tokens were to be had) and what waits for a later round."""
    go: list[Task]
    later: list[Task]
    calls: object
    min_wait: int | None


@dataclass
class Flight:
    """A batch begun: its output so far, the ids a crash left in flight, its first round."""
    out: StageOutput
    crashed: set[str]
    first: Round | None


def make_call_stage(settings: Settings, priority: str = states.CRITICAL, *,
                    pause=None) -> BatchCalls:
    return BatchCalls(settings, priority, pause=pause)
