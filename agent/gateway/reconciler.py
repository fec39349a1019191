"""The reconcile loop, orchestration only: one cycle gathers the inputs (routes, endpoints,
certificates, files), asks the plan what nginx should serve (plan/desired.py), decides (the
same, a change to wait for, or one to apply now: pacing.py) and applies it through the nginx
driver. It returns an Outcome (model.py), which observe/state.py puts into words for the log and
/status; nothing reads those words back.

Cadence is fixed (`next_run += interval`); a cycle that overruns is logged. Changes are applied at
once after a quiet period, and coalesced while reloads come fast: after a reload, the next one
waits until `reload_min_interval` has passed, and then applies the latest state. A rolling update
of ten tasks thus costs a handful of reloads, not twenty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from agent.core.aio import first
from agent.core.fields import is_address
from agent.core.routes import RouteTable, Target
from agent.gateway import persist
from agent.gateway.drivers.memory import give_back
from agent.gateway.drivers.nginx import ApplyError
from agent.gateway.drivers.ports import unbindable, without_ports
from agent.gateway.model import (
    Endpoints,
    FilesPlan,
    Note,
    NoteKind,
    Outcome,
    Rendered,
    Snapshot,
    TlsPlan,
)
from agent.gateway.observe.metrics import Metrics
from agent.gateway.observe.state import State, change_words, describe_change, words
from agent.gateway.pacing import LookupBudget, LookupTimes, ReloadPacer, TokenBucket
from agent.gateway.pipeline import gather
from agent.gateway.plan.desired import Inputs, Planner, acme_target
from agent.gateway.plan.filters import RenderError
from agent.gateway.protocols import (
    CertificateStore,
    Discoverer,
    FileStore,
    LookupServer,
    NginxDriver,
    RoutesSource,
)
from agent.gateway.settings import GatewaySettings

log = logging.getLogger("agent.gateway.reconciler")

# seconds after nginx starts before a gateway whose upstreams nginx resolves is ready: without
# the agent's resolver, its first lookups have been answered or have timed out by then
# (resolver_timeout 1s); with it, readiness waits until nginx has asked for every name, and at
# most FIRST_LOOKUPS_MAX (a name nginx never asks must not keep the gateway unready for ever)
FIRST_LOOKUPS = 1.0
FIRST_LOOKUPS_MAX = 10.0
# Between cycles the loop looks at the routes file's stamp this often (a stat), and a change
# that two looks in a row agree on starts the next cycle at once, as the controller's routes
# do: a change no longer waits for the next poll (up to --poll-interval). Such an early cycle
# looks up only the names it has never looked up (a new route's service), whatever the budget
# of --dns-lookups-per-second: the poll's turn stays as it was, and nginx's questions start no
# lookup (look_again) until the budget has these back.
ROUTES_WATCH = 0.2
# the names nginx asks for within this many seconds are looked up in one round (look_again):
# nginx asks for every name at its start, and again a second after each answer, so its
# questions come together
ASKED_WINDOW = 0.01
_FILE_NOTES: tuple[tuple[str, NoteKind], ...] = (("htpasswd", "password_file"),
                                                 ("page", "error_page"), ("ca", "ca_file"))


class Reconciler:
    def __init__(self, settings: GatewaySettings, nginx: NginxDriver, discovery: Discoverer,
                 planner: Planner, metrics: Metrics, state: State, *, routes: RoutesSource,
                 clock: Callable[[], float] = time.monotonic,
                 certificates: CertificateStore | None = None,
                 route_files: FileStore | None = None,
                 resolver: LookupServer | None = None) -> None:
        self.resolver = resolver  # answers nginx's lookups (drivers/dnsserver.py)
        self.certificates = certificates
        self.route_files = route_files
        self.routes = routes
        self.settings = settings
        self.nginx = nginx
        self.discovery = discovery
        self.planner = planner
        self.metrics = metrics
        self.state = state  # the view: written here, read by the admin server
        self.clock = clock
        self.wake = asyncio.Event()
        self.budget = LookupBudget(settings.dns_lookups_per_second, settings.poll_interval)
        self.lookups = LookupTimes(settings.poll_interval)
        # --dns-lookups-per-second: the poll's rounds spend it (LookupBudget paces them), and
        # nginx's questions start lookups (look_again) with what they leave
        self._lookup_bucket = TokenBucket(settings.dns_lookups_per_second)
        self._asked: tuple[set[str], asyncio.Future[None]] | None = None  # the next such round
        self._asked_tasks: set[asyncio.Task[None]] = set()
        # the names being looked up (or about to be, by the next round of nginx's questions),
        # and when that is done: a name is never in two lookups at once, so that the later
        # answer is always the newer one (and its failure is said once, its recovery once)
        self._looking: dict[str, asyncio.Future[None]] = {}
        self._screened: set[str] = set()  # the services' names (discovery's `screened`)
        self.pacer = ReloadPacer(settings.reload_min_interval)
        self.snapshot: Snapshot = {}  # what discovery knows now
        self._tls: TlsPlan | None = None
        self._files: FilesPlan | None = None
        self._tcp_refused: dict[int, str] = {}
        self._applied_snapshot: Snapshot = {}
        self._applied_routes = RouteTable(())  # as rendered: without refused tcp ports
        self._table = RouteTable(())  # the routes last rendered (_servable())
        self._pending_due: float | None = None
        self._rendered: tuple[object, Rendered] | None = None
        self._state_file = persist.endpoints_file(settings.state_dir)
        self._discovered_at = 0.0  # when the last round of lookups began

    # -- routes ------------------------------------------------------------------------------

    def load_initial_routes(self) -> None:
        """At start: an invalid routes file is fatal (RoutesError with every problem)."""
        self.routes.load_initial()
        self._use_routes()

    def _use_routes(self) -> None:
        """Show the routes in use (and why there are none yet, once nginx serves them)."""
        table = self.routes.table
        if self.routes.pending is not None or table == self._applied_routes:
            self.state.routes_pending = self.routes.pending
        self.state.routes = table
        self.state.routes_error = self.routes.error

    # -- one cycle ---------------------------------------------------------------------------

    @property
    def acme_controller(self) -> tuple[Target, int] | None:
        return acme_target(self.routes.url, self.routes.table)

    def _applied(self, rendered: Rendered, at: float, detail: str,
                 snapshot: Snapshot | None = None) -> None:
        """nginx serves `rendered` (started with it, or reloaded): remember what it was made
        of (`snapshot`: the endpoints known when it was applied, before a lookup nginx's
        question started meanwhile), say so, save the endpoints, and let the stores drop the
        files it no longer uses."""
        self._applied_snapshot = snapshot if snapshot is not None else self.snapshot
        self._applied_routes = self._table
        self.state.routes_pending = self.routes.pending
        self.state.applied_generation = rendered.generation
        self.state.last_reload_at = at
        self.state.last_reload_result = "success"
        self.state.last_reload_detail = detail
        self.metrics.last_reload_success.set(at)
        self.metrics.last_reload_successful.set(1)
        persist.save(self._state_file, self._applied_snapshot)
        if self.certificates is not None:
            self.certificates.applied(self._tls)
        if self.route_files is not None:
            self.route_files.applied(self._files)

    async def discover(self, early: bool = False) -> Snapshot:
        """Look up what is due (LookupBudget); in an `early` cycle (woken before the poll) only
        the names never looked up, within the budget, and the poll's turn is left as it was."""
        table = self.routes.table
        names = [t.lookup_name for t in table.targets]
        acme = self.acme_controller
        if acme is not None and not is_address(acme[0].name):
            names.append(acme[0].lookup_name)
        # a service's tasks are screened (--task-networks); a `host:` name is the operator's
        services = self._screened = {t.lookup_name for t in table.targets
                                     if t.kind == "service"}
        now = self.clock()
        if early:
            due = self.budget.new(names, self.snapshot)
        else:
            due = self.budget.due(names, self.snapshot)
            self._discovered_at = now
            # a round leaves out the names nginx is asking for (LookupTimes.recent)
            recent = self.lookups.recent(due, now)
            due = [n for n in due if n not in recent]
            self.lookups.keep(set(names))
        due = [n for n in due if n not in self._looking]
        self._lookup_bucket.spend(len(due), now)  # (whatever it has: nginx's questions wait)
        self.lookups.looked(due, now)
        done = asyncio.get_running_loop().create_future()
        self._looking.update(dict.fromkeys(due, done))
        try:
            resolved = await self.discovery.resolve(due, self.snapshot, services)
            snapshot = {n: resolved[n] if n in resolved else self.snapshot[n] for n in names
                        if n in resolved or n in self.snapshot}
            self.snapshot = self.state.snapshot = snapshot
        finally:  # (an answer waiting for these lookups gets what they found)
            self._done_looking(due, done)
        # The nameserver works if it answered anything; one service failing (a typo, a name the
        # resolver forwards upstream) must not make the whole gateway unready.
        if not snapshot or not all(e.stale for e in snapshot.values()):
            self.state.last_discovery_ok = self.clock()
        known = [(t.name, snapshot.get(t.lookup_name, Endpoints())) for t in table.targets]
        self.metrics.set_endpoints({name: (len(e.addresses), e.stale) for name, e in known})
        self.metrics.routes.set(len(table.routes) + len(table.tcp))  # http and tcp
        return snapshot

    def look_again(self, name: str) -> asyncio.Future[None] | None:
        """nginx asks for `name` (drivers/dnsserver.py waits for this before answering): a
        lookup of it now, in a round with the others asked within ASKED_WINDOW, when its last
        lookup is not fresh and what the poll's rounds leave of --dns-lookups-per-second has
        room for it (a round's control query counted too). nginx asks once a second: a task
        added is then seen within that second, not after the next round of the poll as well.
        A name being looked up already: that lookup. None: nothing to wait for."""
        if name not in self.snapshot:
            return None
        if (looking := self._looking.get(name)) is not None:
            return looking
        now = self.clock()
        if not self.lookups.stale(name, now) or \
                not self._lookup_bucket.take(1 if self._asked is not None else 2, now):
            return None
        if self._asked is None:
            asked = self._asked = (set(), asyncio.get_running_loop().create_future())
            task = asyncio.get_running_loop().create_task(self._asked_round(asked))
            self._asked_tasks.add(task)
            task.add_done_callback(lambda task: self._asked_ended(task, asked))
        self._asked[0].add(name)
        self._looking[name] = self._asked[1]
        return self._asked[1]

    async def _asked_round(self, asked: tuple[set[str], asyncio.Future[None]]) -> None:
        await asyncio.sleep(ASKED_WINDOW)
        names = asked[0]
        if self._asked is asked:
            self._asked = None
        started = self.clock()
        try:
            resolved = await self.discovery.resolve(names, self.snapshot, self._screened)
        except Exception as exc:  # the poll's next round looks them up again
            log.warning("dns_lookup_failed names=%d error=%r", len(names), str(exc))
            return
        self.lookups.looked(names, started, asked=True)
        fresh = {n: e for n, e in resolved.items() if n in self.snapshot}  # (still wanted)
        if any(self.snapshot[n] != e for n, e in fresh.items()):
            # nginx hears of it at once; the loop's cycle renders what depends on it (a
            # service gone to or from no task) and says what changed, without waiting for
            # the poll
            self.snapshot = self.state.snapshot = {**self.snapshot, **fresh}
            self.wake.set()

    def _asked_ended(self, task: asyncio.Task[None],
                     asked: tuple[set[str], asyncio.Future[None]]) -> None:
        """A round of nginx's questions ended, however (cancelled before it began too): the
        answers waiting for it get what it found, and its names are free for the next."""
        self._asked_tasks.discard(task)
        if self._asked is asked:
            self._asked = None
        self._done_looking(*asked)

    def _done_looking(self, names: Iterable[str], done: asyncio.Future[None]) -> None:
        for name in names:
            if self._looking.get(name) is done:
                del self._looking[name]
        if not done.done():
            done.set_result(None)

    def answer_ttl(self, name: str) -> int:
        """The seconds nginx may keep the agent's answer for `name`: until the agent looks it
        up again (drivers/dnsserver.py). 0 while every name is looked up each cycle: nginx then
        asks again a second later."""
        cycles = self.budget.cycles_until(name)
        if cycles <= 1:
            return 0
        due = self._discovered_at + cycles * self.settings.poll_interval
        return max(0, int(due - self.clock()))

    def _servable(self, table: RouteTable) -> RouteTable:
        """The routes to render: the tcp routes on a port nginx could not listen on (another
        program holds it) are refused alone, saying why in nginx's words, and tried again
        every cycle; everything else is applied. nginx -t does not bind, and a reload that
        cannot bind keeps the old configuration for every route."""
        refused: dict[int, str] = {}
        if table.tcp and self.planner.stream is not None:
            held = {r.listen for r in self._applied_routes.tcp} if self.nginx.running else set()
            refused = unbindable(table, self.planner.stream.address, held)
        if refused != self._tcp_refused:
            for port, why in refused.items():
                if self._tcp_refused.get(port) != why:
                    log.error("tcp_port_refused listen=%d error=%r", port, why)
            for port in sorted(set(self._tcp_refused) - set(refused)):
                log.info("tcp_port_free listen=%d", port)
            self._tcp_refused = self.state.tcp_refused = refused
        self._table = without_ports(table, refused)
        return self._table

    def render(self) -> Rendered:
        """What nginx should serve (plan/desired.py), or the last one when its inputs are the
        same (the idle case).

        Certificates are an input: a replaced certificate file changes the plan (its copy is
        named by its content), so the next cycle renders and reloads.
        """
        key, inputs = self._plan_inputs()
        if self._rendered is None or self._rendered[0] != key:
            self._rendered = (key, self.planner.desired(inputs))
        return self._rendered[1]

    async def render_aside(self) -> Rendered:
        """render(), its pure part (plan/desired.py) in a thread when the inputs changed: at
        thousands of routes it takes seconds, during which the loop keeps answering nginx's
        lookups (drivers/dnsserver.py; unanswered, they time out) and /readyz. The inputs are
        frozen values, and only the cycle, which awaits this, writes self._rendered."""
        key, inputs = self._plan_inputs()
        if self._rendered is None or self._rendered[0] != key:
            self._rendered = (key, await asyncio.to_thread(self.planner.desired, inputs))
            give_back()  # the render's peak (hundreds of MB at 10,000 routes) is garbage now
        return self._rendered[1]

    def _plan_inputs(self) -> tuple[object, Inputs]:
        """The planner's inputs, and the key that tells whether they changed."""
        inputs = gather(self.routes.table, self.snapshot, certificates=self.certificates,
                        route_files=self.route_files, routes_url=self.routes.url)
        if self.certificates is not None:
            self.metrics.tls.plan = inputs.tls
        self._tls, self._files = self.state.tls, self.state.files = inputs.tls, inputs.files
        inputs = replace(inputs, table=self._servable(inputs.table))
        key = (inputs.table, tuple(sorted(
            (name, e.addresses) for name, e in self.snapshot.items())), inputs.tls, inputs.files)
        return key, inputs

    async def apply(self, rendered: Rendered) -> Outcome:
        snapshot = self.snapshot
        change = describe_change(self._applied_snapshot, snapshot,
                                 self._applied_routes, self._table)
        started = time.time()
        try:
            await self.nginx.apply(rendered.text, rendered.generation, rendered.stream)
        except ApplyError as exc:
            self.metrics.reloads.labels("failure").inc()
            self.metrics.apply_failures.labels(exc.stage).inc()
            self.metrics.last_reload_successful.set(0)
            self.state.last_reload_result = "failure"
            self.state.last_reload_detail = str(exc)
            self.state.last_error = str(exc)
            backoff = self.pacer.failed(rendered.generation, self.clock())
            log.error("reload_failed stage=%s change=%r error=%r retry_in=%.0fs", exc.stage,
                      change_words(change), str(exc), backoff)
            return Outcome("refused", change, error=str(exc))
        self.pacer.reloaded(self.clock())
        self.metrics.reloads.labels("success").inc()
        self._applied(rendered, started, change_words(change), snapshot)
        return Outcome("reloaded", change)

    def _followed_without_reload(self) -> Outcome:
        """The configuration is the one serving; tasks may still have changed, which nginx
        follows by itself (upstream `resolve`): say so, and keep them as applied."""
        if self._applied_routes != self._table or {
                n: e.addresses for n, e in self._applied_snapshot.items()} == {
                n: e.addresses for n, e in self.snapshot.items()}:
            return Outcome("no_change")
        change = describe_change(self._applied_snapshot, self.snapshot,
                                 self._applied_routes, self._table)
        self._applied_snapshot = self.snapshot
        persist.save(self._state_file, self._applied_snapshot)
        self.metrics.endpoint_changes.inc()
        return Outcome("followed", change)

    def _tcp_notes(self) -> tuple[Note, ...]:
        if not self._tcp_refused:
            return ()
        return (Note("tcp_port", tuple(f"{port}: {why}" for port, why
                                       in sorted(self._tcp_refused.items()))),)

    def _notes(self) -> tuple[Note, ...]:
        """What is refused alone while the rest serves."""
        notes = [Note("routes_file", (self.routes.error,))] if self.routes.error else []
        notes += self._tcp_notes()
        if self._tls is not None and self._tls.errors:
            notes.append(Note("certificate", tuple(h.host for h in self._tls.errors)))
        for kind, note in _FILE_NOTES:
            refused = tuple(f.error or f.name for f in (self._files.errors if self._files
                                                          else ()) if f.kind == kind)
            if refused:
                notes.append(Note(note, refused))
        return tuple(notes)

    async def cycle(self, early: bool = False) -> Outcome:
        """One cycle; `early`: woken before the poll's time (discover())."""
        self.wake.clear()  # what wakes the loop from now on is seen after this cycle
        self.routes.refresh()
        self._use_routes()
        await self.discover(early)
        rendered = await self.render_aside()
        self._pending_due = None
        if rendered.generation == self.nginx.generation:
            if self.pacer.refused is not None:  # the refused change went away: none pending
                self.pacer.cleared()
                self.metrics.last_reload_successful.set(1)
            outcome = self._followed_without_reload()
        elif (due := self.pacer.due(rendered.generation, self.clock())) is not None:
            self._pending_due = due
            retry = self.pacer.refused == rendered.generation
            outcome = Outcome("retry_pending" if retry else "pending", wait=due - self.clock())
        else:
            outcome = await self.apply(rendered)
        outcome = replace(outcome, notes=self._notes())
        stub = await self.nginx.stub_status()
        self.metrics.stub_status.last = stub
        return outcome

    # -- start -------------------------------------------------------------------------------

    async def start(self) -> Outcome:
        """First configuration, then nginx. Failures here are fatal (ApplyError, NginxDied).

        Lookups that fail now fall back to the endpoints saved by the last run (--state-dir), so a
        gateway restarted while discovery is down serves its last known tasks at once.
        """
        saved = persist.load_saved(self._state_file)
        if saved:
            self.snapshot = self.state.snapshot = saved
        if self.resolver is not None:
            await self.resolver.start()
        await self.discover()
        self.state.serving_saved = any(e.stale and e.addresses for e in self.snapshot.values())
        rendered = await self.render_aside()
        await self.nginx.apply(rendered.text, rendered.generation, rendered.stream)
        if rendered.resolving:
            # nginx's workers look their upstreams' names up 1 ms after they start, and until
            # the answer is in, such an upstream has no server ("no live upstreams", 502: seen
            # for the first request, a millisecond after the start). The agent's resolver says
            # which names nginx has asked for (state.first_lookups); without it, they are
            # answered within resolver_timeout.
            self.state.first_lookups.update(rendered.resolving)
        await self.nginx.start()
        await self.nginx.wait_serving(rendered.generation)
        if rendered.resolving:
            self.state.first_lookups_until = self.clock() + (
                FIRST_LOOKUPS_MAX if self.resolver is not None else FIRST_LOOKUPS)
        self._applied(rendered, time.time(), "started")
        stale = sorted(n for n, e in self.snapshot.items() if e.stale and e.addresses)
        # what is refused alone is said from the start, not from the first cycle on
        return Outcome("started", notes=self._notes(), saved=tuple(stale))

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.poll_interval
        next_run = self.clock()
        last_status = ""
        scheduled = True  # the poll's cycle; else woken early (a change, a pending reload)
        while not stop.is_set():
            started = self.clock()
            try:
                outcome = await self.cycle(early=not scheduled)
                self.metrics.cycles.labels("ok").inc()
            except (RenderError, OSError, ValueError) as exc:
                outcome = Outcome("failed", error=str(exc))
                self.state.last_error = words(outcome)
                self.metrics.cycles.labels("error").inc()
                log.error("cycle_failed error=%r", str(exc))
            except Exception as exc:  # one bad cycle must not end the daemon
                outcome = Outcome("failed", error=repr(exc))
                self.state.last_error = words(outcome)
                self.metrics.cycles.labels("error").inc()
                log.exception("cycle_failed")
            elapsed = self.clock() - started
            self.metrics.reconcile_duration.observe(elapsed)
            self.state.record(outcome)
            self.state.heartbeat = self.clock()
            status = words(outcome)
            if status != last_status or outcome.kind == "reloaded":
                quiet = outcome.kind == "no_change" and not outcome.notes
                log.log(logging.DEBUG if quiet else logging.INFO,
                        "cycle status=%r seconds=%.3f", status, elapsed)
                last_status = status
            if scheduled:  # an early cycle leaves the poll's time where it was
                next_run += interval
                now = self.clock()
                if now > next_run:
                    log.warning("cycle_overran seconds=%.3f interval=%.3f", elapsed, interval)
                    next_run = now
            wake_at = next_run
            if self._pending_due is not None:
                wake_at = min(wake_at, self._pending_due)
            await self._sleep_until(wake_at, stop)
            scheduled = self.clock() >= next_run

    async def _sleep_until(self, when: float, stop: asyncio.Event) -> None:
        """Until `when` (by the clock), or earlier when woken (also during the cycle: cycle()
        clears the event), stopped, or the routes file changed."""
        await first(stop.wait(), self.wake.wait(), asyncio.sleep(max(0.0, when - self.clock())),
                    self._routes_file_changed())

    async def _routes_file_changed(self) -> None:
        """When the routes file changed and two looks ROUTES_WATCH apart saw the same stamp
        (a file being written in place is not read while it grows); a file rewritten without
        pause never wakes the loop, and is read by the poll's cycles as before."""
        seen = None
        while True:
            await asyncio.sleep(ROUTES_WATCH)
            current = self.routes.changed()
            if current is not None and current == seen:
                return
            seen = current
