"""The stage protocol: every pipeline stage is a :class:`Stage` run by one :meth:`Stage.execute`.

A stage declares what it is (``name``), which stages' outputs it consumes (``upstream``), its
settings model (``settings_type``) and, when it reads files outside the run folder, their
hashes (:meth:`Stage.external_inputs`). It implements :meth:`Stage.run`, the work itself: map
a pure partition function over the Dask client and write the outputs into ``ctx.out``.

:meth:`Stage.execute` owns the rest for every stage alike: the upstream stages must be complete
and fresh; the checks that need no cluster (:meth:`Stage.preflight`) run first; the fingerprint
covers settings, code version, external inputs and the upstream output hashes; an unchanged
stage is skipped; otherwise the run folder is locked, the outputs go into a temporary folder
renamed into place on success, and the manifest entry records counts, reject reasons (checked
against :mod:`core.reasons`) and the provenance chain. A ``resumable`` stage keeps the part files
of a killed attempt with the same fingerprint and skips their partitions.

This module imports no Dask: the client is passed in by the caller (the ``rrec`` commands and
``rrec run`` start it).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from core.config import StageSettings
from core.runtime import give_back_memory
from core.stage import RunDir, StageError, StageOutput

log = logging.getLogger(__name__)

S = TypeVar("S", bound=StageSettings)


@dataclass(frozen=True)
class StageResult:
    """What :meth:`Stage.execute` did: ``skipped`` (unchanged) or ran, and the manifest entry."""

    stage: str
    skipped: bool
    entry: dict[str, Any]

    @property
    def rows_in(self) -> int | None:
        return self.entry.get("rows_in")

    @property
    def rows_out(self) -> dict[str, int]:
        return self.entry.get("rows_out", {})

    @property
    def rejects_by_reason(self) -> dict[str, int]:
        return self.entry.get("rejects_by_reason", {})

    @property
    def complete(self) -> bool:
        """False when the stage stopped early on purpose (a budget, a limit) and a rerun continues."""
        return bool(self.entry.get("complete", True))

    def summary(self) -> str:
        """One line for a command's output: rows in and out, rejects by reason."""
        if self.skipped:
            return f"{self.stage}: inputs and settings unchanged, skipped (use --force to rerun)"
        rows_out = ", ".join(f"{table} {count:,}" for table, count in self.rows_out.items())
        rejects = ", ".join(f"{reason} {count:,}" for reason, count in sorted(self.rejects_by_reason.items(), key=lambda kv: -kv[1]))
        rows_in = f"{self.rows_in:,} in" if self.rows_in is not None else "done"
        return f"{self.stage}: {rows_in} -> {rows_out or 'no rows'}; rejects: {rejects or 'none'}"


@dataclass
class StageContext(Generic[S]):
    """Everything :meth:`Stage.run` works with."""

    run: RunDir
    settings: S
    client: Any
    """The Dask client (``distributed.Client``) the stage maps its partitions over."""
    out: StageOutput
    plan: StagePlan
    """This execution's plan; ``plan.resolved`` is what the stage resolved while planning."""


@dataclass(frozen=True)
class StagePlan:
    """The identity of one execution: fingerprint and what it is computed from."""

    fingerprint: str
    config: dict[str, Any]
    inputs: dict[str, str]
    upstream: dict[str, dict[str, str]]
    resolved: Any = None
    """What :meth:`Stage.resolve` found (ingest: the expanded, hashed raw files), once per command."""


class Stage(ABC, Generic[S]):
    """One pipeline stage; subclasses declare ``name``, ``upstream``, ``settings_type`` and ``run``."""

    name: ClassVar[str]
    upstream: ClassVar[tuple[str, ...]] = ()
    """Stages whose outputs this stage reads (all must be complete and fresh)."""
    optional_upstream: ClassVar[tuple[str, ...]] = ()
    """Stages whose outputs are read when they exist (and then enter the fingerprint)."""
    settings_type: ClassVar[type[StageSettings]]
    resumable: ClassVar[bool] = False
    """Whether a killed attempt's complete part files are kept and reused."""

    # -- what a stage may override ---------------------------------------------------------
    def resolve(self, run: RunDir, settings: S) -> Any:
        """Inputs outside the run folder, found once per command (None for most stages); the
        plan carries the result to :meth:`external_inputs`, :meth:`fingerprint_config` and
        :meth:`run` (``ctx.plan.resolved``), so nothing is expanded or hashed twice."""
        return None

    def external_inputs(self, run: RunDir, settings: S, resolved: Any) -> dict[str, str]:
        """Hashes of inputs outside the run folder (raw files); empty for most stages."""
        return {}

    def fingerprint_config(self, settings: S, resolved: Any) -> dict[str, Any]:
        """The settings that change the outputs (all of them by default)."""
        return settings.model_dump(mode="json")

    def preflight(self, run: RunDir, settings: S) -> None:
        """Checks that need no cluster (a missing key, a bad option): raise to refuse early."""

    def consumed_outputs(self, run: RunDir, stage: str) -> dict[str, str]:
        """The outputs of upstream ``stage`` this stage reads (all of them by default)."""
        return dict(run.require(stage)["outputs"])

    def can_skip(self, settings: S, entry: dict[str, Any]) -> bool:
        """Whether an entry with an equal fingerprint may stand (False for a partial run)."""
        return bool(entry.get("complete", True))

    def report(self, result: StageResult) -> str:
        """The line a command prints when the stage is done (rows, rejects by reason)."""
        return result.summary()

    @abstractmethod
    def run(self, ctx: StageContext[S]) -> None:
        """Do the work: write every output into ``ctx.out`` and ``ctx.out.record`` the counts."""

    # -- the protocol ----------------------------------------------------------------------
    def plan(self, run: RunDir, settings: S) -> StagePlan:
        """Check the upstream chain and compute this execution's fingerprint."""
        stale = run.stale_stages()
        for stage in self.upstream:
            run.require(stage, hint=f"rrec {stage} --run {run.path}")
            if stage in stale:
                raise StageError(
                    f"stage '{stage}' of {run.path} is stale ({stale[stage]}); rerun it before {self.name}: `rrec {stage} --run {run.path}`"
                )
        present = [s for s in self.optional_upstream if run.entry(s) is not None and s not in stale]
        upstream = {stage: self.consumed_outputs(run, stage) for stage in (*self.upstream, *present)}
        inputs = {f"{stage}/{name}": digest for stage, outputs in upstream.items() for name, digest in outputs.items()}
        resolved = self.resolve(run, settings)
        inputs.update(self.external_inputs(run, settings, resolved))
        config = self.fingerprint_config(settings, resolved)
        return StagePlan(run.fingerprint(self.name, config=config, inputs=inputs), config, inputs, upstream, resolved)

    def is_current(self, run: Path | str | RunDir, settings: S, plan: StagePlan | None = None) -> bool:
        """Whether :meth:`execute` would skip (checked before a cluster is started)."""
        run = _run_dir(run)
        try:
            plan = plan or self.plan(run, settings)
        except StageError:
            return False
        entry = run.entry(self.name)
        return entry is not None and run.is_current(self.name, plan.fingerprint) and self.can_skip(settings, entry)

    def execute(
        self, run: Path | str | RunDir, settings: S, client: Any, force: bool = False, plan: StagePlan | None = None
    ) -> StageResult:
        """Run the stage into run folder ``run`` unless it is current; returns what happened.

        ``plan`` is one the caller already made for these settings (a command plans once to
        decide, before starting a cluster, whether there is work at all)."""
        run = _run_dir(run)
        self.preflight(run, settings)
        plan = plan or self.plan(run, settings)
        entry = run.entry(self.name)
        if not force and entry is not None and run.is_current(self.name, plan.fingerprint) and self.can_skip(settings, entry):
            log.info("%s: inputs and settings unchanged, skipping (use --force to rerun)", self.name)
            return StageResult(self.name, skipped=True, entry=entry)
        resumable = self.resumable and not force
        try:
            with run.stage(self.name, plan.fingerprint, plan.config, plan.inputs, plan.upstream, resumable=resumable) as out:
                self.run(StageContext(run=run, settings=settings, client=client, out=out, plan=plan))
        finally:
            _give_back_worker_memory(client, self.name)
        return StageResult(self.name, skipped=False, entry=run.require(self.name))


RESTART_ABOVE_BYTES = 768 << 20
"""A worker of this process's own cluster still holding more than this once a stage has given its
freed memory back is restarted before the next stage (a fresh worker holds 330-450 MB once the
stages' modules are imported). At 1 GiB, 14M-review workers kept 0.9 GB from annotate into
validate and peaked at 3.03 GB there (2.46 GB from a fresh worker)."""


def _give_back_worker_memory(client: Any, stage: str) -> None:
    """:func:`core.runtime.give_back_memory` on every worker of ``client`` (None: nothing to do),
    then a restart of the workers that still hold more than :data:`RESTART_ABOVE_BYTES`.

    Freed Python objects leave their allocator's arenas pinned by the few that live on (a Dask
    worker's own bookkeeping among them): after the template annotator at 14M reviews each worker
    kept 1.9 GB through every later stage, which validate's 2 GB came on top of. Only the workers
    of a cluster this process started (a ``LocalCluster``, with nannies) are restarted; an
    external ``--scheduler`` cluster's workers are not ours to restart. A failure to reach the
    workers is logged, never raised over the stage's own outcome.
    """
    if client is None or not callable(getattr(client, "run", None)):
        return
    try:
        held = client.run(give_back_memory)
        heavy = sorted(worker for worker, rss in held.items() if rss > RESTART_ABOVE_BYTES)
        if heavy and getattr(client, "cluster", None) is not None:
            log.info("%s: restarting %d worker(s) still holding over %d MiB", stage, len(heavy), RESTART_ABOVE_BYTES >> 20)
            client.restart_workers(heavy, timeout=120)
    except Exception as error:  # the stage's own outcome matters more than this cleanup
        log.warning("%s: could not return the workers' freed memory: %s", stage, error)


def _run_dir(run: Path | str | RunDir) -> RunDir:
    # Resolved: Dask workers may run in another working directory.
    return run if isinstance(run, RunDir) else RunDir(Path(run).resolve())
