"""The storage market at scale: many customers hiring suppliers through the real fire_hire and supplier_finder.

:func:`run_market` builds one simulated DHT (:class:`~bitnode.sim.dht_churn.ChurnNetwork`,
warm-started) of ``suppliers`` nodes in the suppliers' layer and ``customers``
nodes outside it. Every customer runs the real :class:`FireHire` with the real
:class:`SupplierFinder` (candidates from its own DHT node's ``random_nodes`` in
the suppliers' layer) and real :class:`SupplierConnector` s; the customers start
at random moments within ``start_window``. What is simulated is only the far
end of a contract: :class:`SimSuppliers` answers RequestService, pings and
CancelService after a network delay (a supplier that died answers nothing),
like a supplier with room for everyone.

Load spread: once every customer has ``per_customer`` suppliers, the number
of customers per supplier (max against mean) is the figure.

Death of a busy supplier (:func:`run_rebuild`): ``victim_customers`` customers
are set up with one common supplier (and others from the market); it dies.
Each customer's fire_hire notices on its own (pings, then ``dead_after`` plus
its random share ``dead_spread``) and hires a replacement; that moment starts
the rebuild of the replaced position (the customer's backup_monitor rebuilds
on ``suppliers-changed``), which moves
that customer's blocks of one position: 1/k of its data. The figures are when
the replacements happen (spread over time) and how many positions each
customer replaces (bounded per customer).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from bitnode.customer.fire_hire import DEFAULT_DEAD_SPREAD, FireHire
from bitnode.customer.roster import SupplierRoster
from bitnode.customer.supplier_connector import SupplierConnector
from bitnode.customer.supplier_finder import DEFAULT_HIRE_CHOICES, SupplierFinder
from bitnode.errors import Timeout
from bitnode.sim.dht_churn import ChurnNetwork, ChurnSettings
from bitnode.sim.verdict import Verdict
from bitnode.storage.wire import SUPPLIERS_LAYER


@dataclass(frozen=True)
class MarketSettings:
    """One market run (defaults: the issue's figures, the customer's default settings)."""

    suppliers: int = 2000
    customers: int = 1000
    per_customer: int = 5
    #: suppliers asked at once per hire (the customer's setting services/customer/hire-choices)
    hire_choices: int = DEFAULT_HIRE_CHOICES
    start_window: float = 1800.0
    k: int = 20
    seed: int = 1
    latency: float = 0.05
    request_timeout: float = 30.0
    dead_after: float = 600.0
    #: fire after dead_after plus up to this share of it, drawn per silence (services/customer/dead-after-spread)
    dead_spread: float = DEFAULT_DEAD_SPREAD
    ping_interval: float = 60.0
    check_interval: float = 60.0
    victim_customers: int = 500
    max_load_ratio: float = 2.0
    #: rebuild target: at most this share of the victim's customers start their rebuild in any one minute
    max_share_per_minute: float = 0.15


class MemoryRoster(SupplierRoster):
    """A roster kept in memory (the simulation has no disk to persist to)."""

    def __init__(self) -> None:
        super().__init__("/nonexistent/suppliers.json")

    def _write(self) -> None:
        pass


class SimSuppliers:
    """The supplier end of every contract: answers after a delay; dead suppliers answer nothing."""

    def __init__(self, clock: Any, latency: float, timeout: float) -> None:
        self.clock = clock
        self.latency = latency
        self.timeout = timeout
        self.customers: dict[str, set[str]] = {}
        self.dead: set[str] = set()
        self.requests = Counter[str]()

    def answer(self, supplier_id: str, value: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if supplier_id in self.dead:
            self.clock.callLater(self.timeout, d.errback, Timeout(f"{supplier_id} did not answer"))
        else:
            self.clock.callLater(2 * self.latency, d.callback, value)
        return d

    def for_customer(self, customer_id: str) -> CustomerContracts:
        """The ``contracts`` neighbour of one customer's connectors."""
        return CustomerContracts(self, customer_id)


class CustomerContracts:
    """One customer's view of :class:`SimSuppliers` (the connector's ``contracts`` neighbour)."""

    def __init__(self, suppliers: SimSuppliers, customer_id: str) -> None:
        self.suppliers = suppliers
        self.customer_id = customer_id

    def request_service(self, supplier_id: str, needed_bytes: int) -> defer.Deferred:
        s = self.suppliers
        s.requests[supplier_id] += 1
        if supplier_id not in s.dead:
            s.customers.setdefault(supplier_id, set()).add(self.customer_id)
        return s.answer(supplier_id, {"accepted": True, "quota_bytes": needed_bytes,
                                      "customers": len(s.customers.get(supplier_id, ()))})

    def ping(self, supplier_id: str) -> defer.Deferred:
        return self.suppliers.answer(supplier_id, None)

    def cancel_service(self, supplier_id: str) -> defer.Deferred:
        self.suppliers.customers.get(supplier_id, set()).discard(self.customer_id)
        return self.suppliers.answer(supplier_id, {"cancelled": True})


class Market:
    """The simulated DHT, the customers' machines and the suppliers' ends."""

    def __init__(self, settings: MarketSettings) -> None:
        self.settings = settings
        s = settings
        # The DHT's own upkeep under churn is dht_churn's subject: here its bucket refresh is off (a day),
        # so the simulated time goes to hiring.
        self.sim = ChurnNetwork(ChurnSettings(nodes=s.suppliers + s.customers, k=s.k, seed=s.seed,
                                              latency=s.latency, refresh_interval=24 * 3600.0))
        self.clock = self.sim.clock
        self.suppliers = SimSuppliers(self.clock, s.latency, s.request_timeout)
        self.fire_hires: dict[str, FireHire] = {}
        self.changes: list[tuple[float, str, str]] = []  # (when, customer, reason) of every positions change

    def build(self) -> None:
        """The DHT: suppliers in their layer (the first ``suppliers`` nodes), customers outside it."""
        s = self.settings
        nodes = self.sim.warm_start(s.suppliers + s.customers, SUPPLIERS_LAYER, lambda i: i < s.suppliers)
        self.supplier_nodes = nodes[: s.suppliers]
        self.customer_nodes = nodes[s.suppliers:]
        self.supplier_ids = {self.sim.users[n.node_id] for n in self.supplier_nodes}

    def customer(self, node: Any, roster: SupplierRoster | None = None) -> FireHire:
        """One customer's fire_hire (with its finder and connectors), not started."""
        s = self.settings
        customer_id = self.sim.users[node.node_id]
        contracts = self.suppliers.for_customer(customer_id)
        clock = self.clock

        def random_suppliers(count: int) -> defer.Deferred:
            d = node.random_nodes(SUPPLIERS_LAYER, count)
            return d.addCallback(lambda found: [c["user"] for c in found if c["user"] != customer_id])

        def make_connector(supplier_id: str) -> SupplierConnector:
            return SupplierConnector(clock, supplier_id, contracts, 1 << 30,
                                     intervals={"timer-ping": s.ping_interval, "timer-retry": s.ping_interval / 2})

        def changed(positions: list[str], reason: str) -> None:
            self.changes.append((clock.seconds(), customer_id, reason))

        finder = SupplierFinder(clock, random_suppliers, make_connector, choices=s.hire_choices)
        machine = FireHire(clock, roster or MemoryRoster(), finder, make_connector, lambda: s.per_customer,
                           lambda: s.dead_after, changed,
                           intervals={"timer-1min": s.check_interval, "timer-probe": s.check_interval},
                           cancel_service=contracts.cancel_service, monotonic=clock.seconds,
                           dead_spread=lambda: s.dead_spread, rng=random.Random(self.sim.rng.getrandbits(64)))
        self.fire_hires[customer_id] = machine
        return machine

    def hired_everyone(self) -> bool:
        """Every customer has all its positions filled."""
        return all(len(m.roster.hired()) == self.settings.per_customer for m in self.fire_hires.values())

    def run_until_hired(self, limit: float) -> None:
        """Step the simulation until every customer is complete (or ``limit`` simulated seconds)."""
        end = self.clock.seconds() + limit
        while self.clock.seconds() < end and not self.hired_everyone():
            self.sim.net.run_for(60)

    def loads(self) -> dict[str, int]:
        """Customers per supplier (every supplier of the layer, idle ones with 0), from the customers' rosters."""
        count = Counter({sid: 0 for sid in self.supplier_ids})
        for machine in self.fire_hires.values():
            count.update(machine.roster.hired())
        return dict(count)

    def stop(self) -> None:
        """Stop the machines and the DHT."""
        for machine in self.fire_hires.values():
            if not machine.destroyed:
                machine.event("shutdown")
        self.sim.stop()


@dataclass
class MarketResult:
    """Load spread of one market run."""

    settings: MarketSettings
    loads: dict[str, int]
    complete: int
    hire_seconds: float
    wall_seconds: float

    @property
    def mean(self) -> float:
        return statistics.mean(self.loads.values()) if self.loads else 0.0

    @property
    def ratio(self) -> float:
        """Most loaded supplier against the mean."""
        return max(self.loads.values()) / self.mean if self.mean else math.inf

    def histogram(self) -> dict[int, int]:
        """How many suppliers serve 0, 1, 2 ... customers."""
        return dict(sorted(Counter(self.loads.values()).items()))

    def verdicts(self) -> list[Verdict]:
        s = self.settings
        return [Verdict(
            "sim_market_spread",
            f"simulated market, {s.customers:,} customers x {s.per_customer} of {s.suppliers:,} suppliers: "
            f"max load <= {s.max_load_ratio:g}x mean",
            f"max {max(self.loads.values())} customers per supplier, mean {self.mean:.2f} "
            f"({self.ratio:.2f}x); {self.complete} of {s.customers} customers complete",
            self.ratio <= s.max_load_ratio and self.complete == s.customers)]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings.__dict__, "mean": self.mean, "max": max(self.loads.values()),
                "ratio": self.ratio, "histogram": self.histogram(), "complete": self.complete,
                "hire_seconds": self.hire_seconds, "wall_seconds": round(self.wall_seconds, 1),
                "verdicts": [v.line() for v in self.verdicts()],
                "checks": [v.to_check() for v in self.verdicts()]}


def run_market(settings: MarketSettings = MarketSettings(), progress: Any = None) -> MarketResult:
    """Every customer hires its suppliers; returns the load spread (see the module docstring)."""
    wall = time.perf_counter()
    market = Market(settings)
    market.build()
    if progress:
        progress(f"market: DHT of {settings.suppliers} suppliers + {settings.customers} customers up in "
                 f"{time.perf_counter() - wall:.0f} s wall")
    start = market.clock.seconds()
    rng = market.sim.rng
    for node in market.customer_nodes:
        market.clock.callLater(rng.uniform(0, settings.start_window), market.customer(node).event, "init")
    market.run_until_hired(settings.start_window + 6 * 3600)
    hire_seconds = market.clock.seconds() - start
    complete = sum(1 for m in market.fire_hires.values() if len(m.roster.hired()) == settings.per_customer)
    result = MarketResult(settings, market.loads(), complete, hire_seconds, time.perf_counter() - wall)
    market.stop()
    return result


@dataclass
class RebuildResult:
    """When the customers of a dead supplier replaced it."""

    settings: MarketSettings
    died_at: float
    replaced_at: list[float]  # seconds after the death, one per customer that replaced it
    positions_replaced: Counter[int]  # customers by number of positions they replaced
    wall_seconds: float

    def per_minute(self) -> dict[int, int]:
        """Replacements (so rebuild starts) per minute after the death."""
        return dict(sorted(Counter(int(t // 60) for t in self.replaced_at).items()))

    @property
    def busiest_share(self) -> float:
        """The largest share of the customers that started a rebuild within one minute."""
        n = self.settings.victim_customers
        return max(self.per_minute().values(), default=0) / n if n else 0.0

    def verdicts(self) -> list[Verdict]:
        s = self.settings
        n = len(self.replaced_at)
        spread = (f"{n} of {s.victim_customers} customers replaced it between "
                  f"{min(self.replaced_at, default=0) / 60:.1f} and {max(self.replaced_at, default=0) / 60:.1f} min; "
                  f"busiest minute {self.busiest_share:.0%}; positions replaced per customer: "
                  f"{dict(sorted(self.positions_replaced.items()))}")
        bounded = set(self.positions_replaced) <= {1}
        return [Verdict(
            "sim_rebuild_spread",
            f"simulated death of a supplier of {s.victim_customers} customers: rebuild spread "
            f"(<= {s.max_share_per_minute:.0%} of them start in any one minute), one position per customer",
            spread, n == s.victim_customers and self.busiest_share <= s.max_share_per_minute and bounded)]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings.__dict__, "per_minute": self.per_minute(),
                "replaced": len(self.replaced_at), "busiest_share": self.busiest_share,
                "positions_replaced": dict(self.positions_replaced), "wall_seconds": round(self.wall_seconds, 1),
                "verdicts": [v.line() for v in self.verdicts()],
                "checks": [v.to_check() for v in self.verdicts()]}


def run_rebuild(settings: MarketSettings = MarketSettings(), progress: Any = None) -> RebuildResult:
    """``victim_customers`` customers share one supplier, which dies; when does each replace it?"""
    wall = time.perf_counter()
    s = settings
    market = Market(s)
    market.build()
    victim_node = market.supplier_nodes[0]
    victim = market.sim.users[victim_node.node_id]
    rng = market.sim.rng
    others = sorted(market.supplier_ids - {victim})
    for node in market.customer_nodes[: s.victim_customers]:
        roster = MemoryRoster()
        roster.positions = [victim, *rng.sample(others, s.per_customer - 1)]
        market.clock.callLater(rng.uniform(0, s.start_window), market.customer(node, roster).event, "init")
    market.sim.net.run_for(s.start_window + 2 * s.check_interval)
    if progress:
        progress(f"rebuild: {s.victim_customers} customers of {victim} connected; it dies")
    died = market.clock.seconds()
    market.suppliers.dead.add(victim)
    market.changes.clear()
    market.sim.leave_node(victim_node)
    market.sim.net.run_for(s.dead_after + 3600)
    replaced: dict[str, float] = {}
    per_customer: Counter[str] = Counter()
    for when, customer_id, reason in market.changes:
        if reason.startswith("fired"):
            per_customer[customer_id] += 1
            replaced.setdefault(customer_id, when - died)
    result = RebuildResult(s, died, sorted(replaced.values()), Counter(per_customer.values()),
                           time.perf_counter() - wall)
    market.stop()
    return result
