"""Plans: pure functions from (fleet, policy, ledger, target) to stages -> batches -> hosts.

A forward plan updates hosts stage by stage; a revert plan brings each host back to its own target,
wide and without bakes. The engine runs either. Same inputs, same plan, same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fleetctl.config import RollbackPolicy, RolloutPolicy
from fleetctl.errors import StalePlanError, UsageError
from fleetctl.inventory import Fleet
from fleetctl.units import format_duration

# Rough costs on a small controller (Ansible ~0.5 CPU-s per host per task, 2 cores): for the estimate only.
SECONDS_PER_HOST_TASK = 0.5
RUN_OVERHEAD = 4.0
CORES = 2


@dataclass(frozen=True)
class StagePlan:
    name: str
    pattern: str
    batches: list[list[str]]
    bake: float
    max_failures: int | None  # None: only the run budget applies
    unattended: bool = True

    @property
    def hosts(self) -> list[str]:
        return [h for b in self.batches for h in b]


@dataclass(frozen=True)
class Plan:
    kind: str  # rollout | rollback
    component: str
    version: str | None  # the rollout's version; a rollback's --to, else None
    stages: list[StagePlan]
    targets: dict[str, str]  # host -> version it goes to
    from_versions: dict[str, str | None]  # host -> version the ledger had
    skipped: list[dict[str, str]]
    max_failures: int
    forks: int
    on_failure: str
    inventory_fingerprint: str
    policy_fingerprint: str
    limit: str | None = None
    tasks_per_host: int = 2
    fingerprint: str = field(default="")

    @property
    def hosts(self) -> list[str]:
        return [h for s in self.stages for h in s.hosts]

    def stage_of(self, host: str) -> StagePlan:
        return next(s for s in self.stages if host in s.hosts)

    def estimate_seconds(self) -> float:
        total = 0.0
        for stage in self.stages:
            for batch in stage.batches:
                waves = math.ceil(len(batch) / max(1, self.forks))
                cpu = len(batch) * self.tasks_per_host * SECONDS_PER_HOST_TASK / CORES
                total += RUN_OVERHEAD + max(cpu, waves * 1.0) + stage.bake
        return total

    def to_json(self) -> dict[str, Any]:
        doc = _core(self)
        doc["fingerprint"] = self.fingerprint
        doc["estimate_seconds"] = round(self.estimate_seconds(), 1)
        doc["estimate"] = format_duration(self.estimate_seconds())
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Plan:
        try:
            stages = [
                StagePlan(**{k: s[k] for k in StagePlan.__dataclass_fields__ if k in s})
                for s in doc["stages"]
            ]
            fields = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc and k != "stages"}
            plan = cls(stages=stages, **fields)
        except (KeyError, TypeError) as exc:
            raise UsageError(
                f"not a fleetctl plan: missing or bad field {exc}",
                "write one with `fleetctl plan VERSION -o plan.json`",
            ) from None
        if plan.fingerprint != _fingerprint(plan):
            raise StalePlanError(
                "the plan file was edited: its fingerprint does not match its content",
                "make a new plan with `fleetctl plan VERSION -o plan.json`",
            )
        return plan


def _core(plan: Plan) -> dict[str, Any]:
    doc = asdict(plan)
    doc.pop("fingerprint")
    return doc


def _fingerprint(plan: Plan) -> str:
    return hashlib.sha256(json.dumps(_core(plan), sort_keys=True).encode()).hexdigest()[:16]


def _seal(plan: Plan) -> Plan:
    object.__setattr__(plan, "fingerprint", _fingerprint(plan))
    return plan


def policy_fingerprint(policy: RolloutPolicy | RollbackPolicy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:16]


def spread(
    hosts: Sequence[str], size: int, label_of: Mapping[str, str], cap: Mapping[str, int]
) -> list[list[str]]:
    """Cut hosts into batches of at most `size`, with at most cap[label] hosts of one label per batch.

    Labels take turns (sorted), hosts keep their inventory order within a label, so zones interleave.
    """
    queues: dict[str, list[str]] = {}
    for h in hosts:
        queues.setdefault(label_of[h], []).append(h)
    labels = sorted(queues)
    batches: list[list[str]] = []
    start = 0  # turns carry over from batch to batch, so zones interleave and no batch is wasted
    while any(queues.values()):
        batch: list[str] = []
        taken = dict.fromkeys(labels, 0)
        last = start - 1
        progress = True
        while progress and len(batch) < size:
            progress = False
            for i in range(len(labels)):
                at = (start + i) % len(labels)
                label = labels[at]
                if queues[label] and taken[label] < cap[label] and len(batch) < size:
                    batch.append(queues[label].pop(0))
                    taken[label] += 1
                    progress = True
                    last = at
        start = (last + 1) % len(labels)
        batches.append(batch)
    return batches


def rollout_plan(
    fleet: Fleet,
    policy: RolloutPolicy,
    versions: Mapping[str, str | None],
    version: str,
    *,
    component: str,
    limit: str | None = None,
) -> Plan:
    """The staged plan for bringing the fleet (or the hosts matching `limit`) to `version`."""
    selected = set(fleet.select(limit)) if limit else set(fleet.names)
    taken: set[str] = set()
    stages: list[StagePlan] = []
    skipped: list[dict[str, str]] = []
    targets: dict[str, str] = {}
    for stage in policy.stages:
        members = [h for h in fleet.select(stage.hosts, required=False) if h not in taken]
        taken.update(members)
        todo = []
        for h in members:
            if h not in selected:
                continue
            if versions.get(h) == version:
                skipped.append({"host": h, "reason": f"already at {version}"})
            else:
                todo.append(h)
        if not todo:
            continue
        labels = {h: str(fleet[h].var(policy.spread_by, "")) if policy.spread_by else "" for h in todo}
        per_label: dict[str, int] = {}
        for h in todo:
            per_label[labels[h]] = per_label.get(labels[h], 0) + 1
        cap = {
            lab: (policy.max_unavailable.of(n, minimum=1) if policy.max_unavailable else n)
            for lab, n in per_label.items()
        }
        size = stage.batch.of(len(todo), minimum=1)
        budget = stage.max_failures.of(len(todo)) if stage.max_failures is not None else None
        stages.append(
            StagePlan(
                stage.name, stage.hosts, spread(todo, size, labels, cap), stage.bake, budget, stage.unattended
            )
        )
        targets.update(dict.fromkeys(todo, version))
    for h in fleet.names:
        if h not in taken and h in selected:
            skipped.append({"host": h, "reason": "in no stage of the policy"})
        elif h not in selected:
            skipped.append({"host": h, "reason": "outside -l"})
    total = sum(len(s.hosts) for s in stages)
    return _seal(
        Plan(
            kind="rollout",
            component=component,
            version=version,
            stages=stages,
            targets=targets,
            from_versions={h: versions.get(h) for h in targets},
            skipped=skipped,
            max_failures=policy.max_failures.of(total),
            forks=policy.forks,
            on_failure=policy.on_failure,
            inventory_fingerprint=fleet.fingerprint(),
            policy_fingerprint=policy_fingerprint(policy),
            limit=limit,
        )
    )


def revert_plan(
    fleet: Fleet,
    policy: RollbackPolicy,
    versions: Mapping[str, str | None],
    targets: Mapping[str, str],
    *,
    component: str,
    version: str | None = None,
    limit: str | None = None,
    forks: int | None = None,
) -> Plan:
    """Bring each host to its own target, wide, without bakes. Hosts already there are skipped."""
    order = {h: i for i, h in enumerate(fleet.names)}
    todo = sorted(
        (h for h, t in targets.items() if versions.get(h) != t), key=lambda h: order.get(h, len(order))
    )
    skipped = [{"host": h, "reason": f"already at {t}"} for h, t in targets.items() if versions.get(h) == t]
    size = policy.batch.of(len(todo), minimum=1) if todo else 1
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    stages = [StagePlan("rollback", limit or "all", batches, 0.0, None)] if todo else []
    return _seal(
        Plan(
            kind="rollback",
            component=component,
            version=version,
            stages=stages,
            targets={h: targets[h] for h in todo},
            from_versions={h: versions.get(h) for h in todo},
            skipped=skipped,
            max_failures=len(todo),
            forks=forks or policy.forks,
            on_failure="halt",
            inventory_fingerprint=fleet.fingerprint(),
            policy_fingerprint=policy_fingerprint(policy),
            limit=limit,
            tasks_per_host=1,
        )
    )


def check_fresh(saved: Plan, current: Plan) -> None:
    """Refuse a saved plan when the inventory, the policy or a planned host's version changed since."""
    if saved.inventory_fingerprint != current.inventory_fingerprint:
        raise StalePlanError(
            "stale plan: the inventory changed since the plan was made",
            "make a new plan with `fleetctl plan`",
        )
    if saved.policy_fingerprint != current.policy_fingerprint:
        raise StalePlanError(
            "stale plan: the rollout policy in fleet.yml changed since the plan was made",
            "make a new plan with `fleetctl plan`",
        )
    moved = [h for h, v in saved.from_versions.items() if current.from_versions.get(h, saved.version) != v]
    if not moved and set(saved.targets) != set(current.targets):
        raise StalePlanError(
            "stale plan: the hosts to update changed since the plan was made",
            "make a new plan with `fleetctl plan`",
        )
    if moved:
        raise StalePlanError(
            f"stale plan: {len(moved)} planned host(s) changed version since, e.g. {moved[0]}",
            "make a new plan with `fleetctl plan`",
        )


def describe(stage: StagePlan) -> str:
    budget = "run budget only" if stage.max_failures is None else f"max {stage.max_failures} failures"
    return (
        f"{stage.name}: {len(stage.hosts)} hosts in {len(stage.batches)} batch(es), "
        f"bake {format_duration(stage.bake)}, {budget}"
    )
