"""Plans: pure functions from (fleet, policy, ledger, target) to stages -> batches -> hosts.

A forward plan updates hosts stage by stage; a revert plan brings each host back to its own target,
wide and without bakes. The engine runs either. Same inputs, same plan, same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from fleetctl.config import RollbackPolicy, RolloutPolicy
from fleetctl.errors import StalePlanError, UsageError
from fleetctl.inventory import Fleet
from fleetctl.units import BadNodeVersion, format_duration, node_version, shown

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
        return sum(self.batch_seconds(stage, batch) for stage in self.stages for batch in stage.batches)

    def batch_seconds(self, stage: StagePlan, batch: list[str]) -> float:
        """The one ETA model (plan, the live bar and `status` share it): one batch and its stage's bake."""
        waves = math.ceil(len(batch) / max(1, self.forks))
        cpu = len(batch) * self.tasks_per_host * SECONDS_PER_HOST_TASK / CORES
        return RUN_OVERHEAD + max(cpu, waves * 1.0) + stage.bake

    def to_json(self) -> dict[str, Any]:
        doc = _core(self)
        doc["fingerprint"] = self.fingerprint
        doc["estimate_seconds"] = round(self.estimate_seconds(), 1)
        doc["estimate"] = format_duration(self.estimate_seconds())
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Plan:
        """A plan from a plan file or the journal. Every field is checked (its versions are untrusted
        text: they go into extra vars); an edited plan is refused by its fingerprint."""
        hint = "write one with `fleetctl plan VERSION -o plan.json`"
        try:
            if not isinstance(doc, Mapping) or not isinstance(doc["stages"], list):
                raise TypeError("stages")
            stages = [
                StagePlan(**{k: s[k] for k in StagePlan.__dataclass_fields__ if k in s})
                for s in doc["stages"]
            ]
            fields = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc and k != "stages"}
            plan = cls(stages=stages, **fields)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"not a fleetctl plan: missing or bad field {exc}", hint) from None
        try:
            sealed = _fingerprint(plan)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"not a fleetctl plan: {exc}", hint) from None
        if plan.fingerprint != sealed:
            raise StalePlanError(
                "the plan file was edited: its fingerprint does not match its content",
                "make a new plan with `fleetctl plan VERSION -o plan.json`",
            )
        problem = _malformed(plan)
        if problem:
            raise UsageError(f"not a fleetctl plan: {problem}", hint)
        return plan


def _is_text(v: object) -> bool:
    return isinstance(v, str)


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _bad_version(v: object, nullable: bool = False) -> str | None:
    if v is None and nullable:
        return None
    try:
        node_version(v)
    except BadNodeVersion:
        return f"{shown(v)} is not a plain version (only letters, digits, '.', '-', '+', '_')"
    return None


def _malformed(plan: Plan) -> str | None:
    """What is wrong with a plan's fields, if anything (None: well formed)."""
    if plan.kind not in ("rollout", "rollback"):
        return f"kind {shown(plan.kind)} is neither rollout nor rollback"
    for name in ("component", "on_failure", "inventory_fingerprint", "policy_fingerprint", "fingerprint"):
        if not _is_text(getattr(plan, name)):
            return f"field {name} is not text"
    if plan.limit is not None and not _is_text(plan.limit):
        return "field limit is not text"
    for name in ("max_failures", "forks", "tasks_per_host"):
        if not _is_count(getattr(plan, name)):
            return f"field {name} is not a count"
    if plan.version is not None and (bad := _bad_version(plan.version)):
        return f"version {bad}"
    if plan.kind == "rollout" and plan.version is None:
        return "a rollout plan needs a version"
    if not isinstance(plan.targets, dict) or not isinstance(plan.from_versions, dict):
        return "targets and from_versions must be objects"
    for host, v in plan.targets.items():
        if bad := _bad_version(v):
            return f"targets[{shown(host)}] {bad}"
    for host, was in plan.from_versions.items():
        if bad := _bad_version(was, nullable=True):
            return f"from_versions[{shown(host)}] {bad}"
    if not isinstance(plan.skipped, list) or not all(
        isinstance(x, dict) and all(_is_text(k) and _is_text(v) for k, v in x.items()) for x in plan.skipped
    ):
        return "skipped must be a list of objects of text"
    planned: list[str] = []
    for stage in plan.stages:
        if not _is_text(stage.name) or not _is_text(stage.pattern):
            return "a stage's name and pattern must be text"
        if not isinstance(stage.batches, list) or not all(
            isinstance(b, list) and b and all(_is_text(h) for h in b) for b in stage.batches
        ):
            return f"stage {shown(stage.name)}: batches must be non-empty lists of host names"
        if isinstance(stage.bake, bool) or not isinstance(stage.bake, int | float) or not stage.bake >= 0:
            return f"stage {shown(stage.name)}: bake is not a number of seconds"
        if stage.max_failures is not None and not _is_count(stage.max_failures):
            return f"stage {shown(stage.name)}: max_failures is not a count"
        if not isinstance(stage.unattended, bool):
            return f"stage {shown(stage.name)}: unattended is not true or false"
        planned.extend(stage.hosts)
    if len(set(planned)) != len(planned) or set(planned) != set(plan.targets):
        return "the stages' hosts and the targets do not match"
    return None


def _core(plan: Plan) -> dict[str, Any]:
    # A deep copy, as asdict made (whose deepcopy of every value is slow at 100k hosts).
    doc = {f.name: _copied(getattr(plan, f.name)) for f in fields(plan) if f.name != "fingerprint"}
    doc["stages"] = [{f.name: _copied(getattr(s, f.name)) for f in fields(s)} for s in plan.stages]
    return doc


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copied(v) if isinstance(v, dict | list | tuple) else v for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copied(v) if isinstance(v, dict | list | tuple) else v for v in value)
    return value


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
    """Bring each host to its own target, wide, without bakes. Hosts already there are skipped, and so is
    a host whose target is not a plain version (a from-version a node reported, say): it is not
    revertible, and says why in `skipped`, rather than carrying that text into a playbook's extra vars."""
    order = {h: i for i, h in enumerate(fleet.names)}
    unrevertible = [
        {"host": h, "reason": f"not revertible: the version to go back to, {bad}"}
        for h, t in targets.items()
        if (bad := _bad_version(t))
    ]
    targets = {h: t for h, t in targets.items() if not _bad_version(t)}
    versions = {h: v for h, v in versions.items() if not _bad_version(v, nullable=True)}
    todo = sorted(
        (h for h, t in targets.items() if versions.get(h) != t), key=lambda h: order.get(h, len(order))
    )
    skipped = [{"host": h, "reason": f"already at {t}"} for h, t in targets.items() if versions.get(h) == t]
    skipped += unrevertible
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
    """Refuse a saved plan unless it is the plan made now from the current inventory, policy and ledger:
    every executable field (stages, batches, hosts, targets, bakes, budgets, on_failure, forks...) must be
    equal. A fingerprint proves nothing (anyone can recompute it); rebuilding does."""
    hint = "make a new plan with `fleetctl plan`"
    if saved.inventory_fingerprint != current.inventory_fingerprint:
        raise StalePlanError("stale plan: the inventory changed since the plan was made", hint)
    if saved.policy_fingerprint != current.policy_fingerprint:
        raise StalePlanError(
            "stale plan: the rollout policy in fleet.yml changed since the plan was made", hint
        )
    moved = [h for h, v in saved.from_versions.items() if current.from_versions.get(h, saved.version) != v]
    if moved:
        raise StalePlanError(
            f"stale plan: {len(moved)} planned host(s) changed version since, e.g. {shown(moved[0])}", hint
        )
    if set(saved.targets) != set(current.targets):
        raise StalePlanError("stale plan: the hosts to update changed since the plan was made", hint)
    diffs = differences(saved, current)
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise StalePlanError(
            f"the plan is not the one fleetctl makes now: {'; '.join(diffs[:3])}{more}",
            "make a new plan with `fleetctl plan VERSION -o plan.json` and do not edit it",
        )


_PLAN_FIELDS = (
    "kind",
    "component",
    "version",
    "limit",
    "max_failures",
    "forks",
    "on_failure",
    "tasks_per_host",
    "targets",
    "from_versions",
    "skipped",
)
_STAGE_FIELDS = ("pattern", "bake", "max_failures", "unattended", "batches")


def differences(saved: Plan, current: Plan) -> list[str]:
    """Where a saved plan differs from the plan made now, in words (values escaped: a plan file is
    untrusted text). Empty when they are equal."""
    out = []
    for name in _PLAN_FIELDS:
        a, b = getattr(saved, name), getattr(current, name)
        if a != b:
            out.append(f"{name} is {shown(a)} in the plan, {shown(b)} now")
    names = [s.name for s in saved.stages], [s.name for s in current.stages]
    if names[0] != names[1]:
        out.append(f"stages are {shown(names[0])} in the plan, {shown(names[1])} now")
        return out
    for mine, now in zip(saved.stages, current.stages, strict=True):
        for name in _STAGE_FIELDS:
            a, b = getattr(mine, name), getattr(now, name)
            if a == b:
                continue
            if name == "batches":
                at = next(
                    (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
                )
                out.append(
                    f"stage {shown(mine.name)}: {len(a)} batch(es) in the plan, {len(b)} now; "
                    f"batch {at + 1} differs"
                )
            else:
                out.append(f"stage {shown(mine.name)}: {name} is {shown(a)} in the plan, {shown(b)} now")
    if not out and saved.fingerprint != current.fingerprint:
        out.append("the fingerprints differ")
    return out


def describe(stage: StagePlan) -> str:
    budget = "run budget only" if stage.max_failures is None else f"max {stage.max_failures} failures"
    return (
        f"{stage.name}: {len(stage.hosts)} hosts in {len(stage.batches)} batch(es), "
        f"bake {format_duration(stage.bake)}, {budget}"
    )
