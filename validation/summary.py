"""Typed validation results, from one partition's check to the run's ``summary.json``.

- :class:`CheckResult`: one expectation over some rows (a partition, a hash bucket, the
  footers); results of the same expectation merge (:meth:`CheckResult.merge`).
- :class:`ExpectationSummary`: one expectation of a suite as reported: what it checks
  (name, type, severity, scope, who computed it) and its merged result.
- :class:`SuiteSummary`: one table's suite; :class:`ValidationSummary`: the whole run.

``to_json()`` writes the shape ``summary.json`` has always had (``release/`` and
``datacards/`` read it: ``success``, ``critical_failures``, per-suite results); the one
addition is ``computed_by`` on each expectation. ``from_json()`` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from validation.spec import CRITICAL


@dataclass(frozen=True)
class CheckResult:
    """The result of one expectation over some rows, in GX's terms."""

    success: bool
    element_count: int
    unexpected_count: int
    missing_count: int = 0
    examples: tuple[Any, ...] = ()
    """The first unexpected values (with the row's key columns) or keys, in table order."""
    error: str | None = None
    observed_value: Any = None
    """What a table-level check observed (the row count, the columns); None for row checks."""

    def merge(self, other: CheckResult, examples: int) -> CheckResult:
        """This result and ``other`` (later rows) as one; keeps the first ``examples`` examples."""
        return CheckResult(
            success=self.success and other.success,
            element_count=self.element_count + other.element_count,
            unexpected_count=self.unexpected_count + other.unexpected_count,
            missing_count=self.missing_count + other.missing_count,
            examples=(self.examples + other.examples)[:examples],
            error=self.error or other.error,
            observed_value=self.observed_value if self.observed_value is not None else other.observed_value,
        )


def merge_results(per_partition: list[dict[str, CheckResult]], examples: int) -> dict[str, CheckResult]:
    """Combine per-partition results (in partition order) into one result per expectation."""
    merged: dict[str, CheckResult] = {}
    for partition in per_partition:
        for name, result in partition.items():
            merged[name] = merged[name].merge(result, examples) if name in merged else replace(result, examples=result.examples[:examples])
    return merged


@dataclass(frozen=True)
class ExpectationSummary:
    """One expectation of a suite as ``summary.json`` reports it."""

    name: str
    type: str
    severity: str
    scope: str
    computed_by: str
    description: str | None
    kwargs: dict[str, Any]
    success: bool | None
    """None: not evaluated (see ``error``)."""
    element_count: int = 0
    unexpected_count: int = 0
    unexpected_percent: float | None = None
    unexpected_examples: list[Any] = field(default_factory=list)
    error: str | None = None
    derived: str | None = None
    observed_value: Any = None

    @classmethod
    def of(
        cls, expectation: dict[str, Any], kwargs: dict[str, Any], computed_by: str, result: CheckResult | None, not_evaluated: str
    ) -> ExpectationSummary:
        """The summary of suite JSON ``expectation`` given its merged ``result`` (None: not run)."""
        meta = expectation["meta"]
        base = {
            "name": meta["name"],
            "type": expectation["type"],
            "severity": meta["severity"],
            "scope": meta["scope"],
            "computed_by": computed_by,
            "description": expectation.get("description"),
            "kwargs": kwargs,
            "derived": meta.get("derived"),
        }
        if result is None:
            return cls(**base, success=None, error=not_evaluated)
        checked = result.element_count - result.missing_count
        return cls(
            **base,
            success=result.success,
            element_count=result.element_count,
            unexpected_count=result.unexpected_count,
            unexpected_percent=round(100.0 * result.unexpected_count / checked, 4) if checked else 0.0,
            unexpected_examples=list(result.examples),
            error=result.error,
            observed_value=result.observed_value,
        )

    @property
    def failed(self) -> bool:
        """Evaluated and failed (not-evaluated expectations are counted by ``all_passed`` only)."""
        return self.success is False

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "type": self.type,
            "severity": self.severity,
            "scope": self.scope,
            "computed_by": self.computed_by,
            "description": self.description,
            "kwargs": self.kwargs,
        }
        if self.derived:
            data["derived"] = self.derived
        data.update(
            success=self.success,
            element_count=self.element_count,
            unexpected_count=self.unexpected_count,
            unexpected_percent=self.unexpected_percent,
            unexpected_examples=[_json_value(e) for e in self.unexpected_examples],
            error=self.error,
        )
        if self.observed_value is not None:
            data["observed_value"] = self.observed_value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExpectationSummary:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SuiteSummary:
    """One table's suite: present or not, and each expectation's summary."""

    present: bool
    expectations: list[ExpectationSummary] = field(default_factory=list)
    partitions: int | None = None
    rows: int | None = None

    @classmethod
    def absent(cls) -> SuiteSummary:
        """A table that does not exist yet (e.g. ``filtered`` before annotation): not a failure."""
        return cls(present=False)

    @property
    def critical_failures(self) -> int:
        return sum(e.failed and e.severity == CRITICAL for e in self.expectations)

    @property
    def warning_failures(self) -> int:
        return sum(e.failed and e.severity != CRITICAL for e in self.expectations)

    @property
    def success(self) -> bool:
        """No critical expectation failed (the release gate, per table)."""
        return self.critical_failures == 0

    @property
    def all_passed(self) -> bool | None:
        """Every expectation evaluated and passed; None for an absent table."""
        return all(e.success for e in self.expectations) if self.present else None

    def to_json(self) -> dict[str, Any]:
        head: dict[str, Any] = {"present": self.present}
        if self.present:
            head.update(partitions=self.partitions, rows=self.rows)
        return {
            **head,
            "all_passed": self.all_passed,
            "success": self.success,
            "critical_failures": self.critical_failures,
            "warning_failures": self.warning_failures,
            "expectations": [e.to_json() for e in self.expectations],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuiteSummary:
        return cls(
            present=data["present"],
            expectations=[ExpectationSummary.from_json(e) for e in data.get("expectations", [])],
            partitions=data.get("partitions"),
            rows=data.get("rows"),
        )


@dataclass(frozen=True)
class ValidationSummary:
    """The run's validation: what ``validation/summary.json`` holds."""

    run: str
    validated_at: str
    code_version: str
    parameters: dict[str, Any]
    suites: dict[str, SuiteSummary]
    data_docs: str

    @property
    def critical_failures(self) -> int:
        """Failed critical expectations, all suites together (a release needs 0)."""
        return sum(s.critical_failures for s in self.suites.values())

    @property
    def warning_failures(self) -> int:
        return sum(s.warning_failures for s in self.suites.values())

    @property
    def success(self) -> bool:
        return self.critical_failures == 0

    @property
    def rows(self) -> int:
        """Rows of every validated table together."""
        return sum(s.rows or 0 for s in self.suites.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "validated_at": self.validated_at,
            "code_version": self.code_version,
            "parameters": self.parameters,
            "success": self.success,
            "critical_failures": self.critical_failures,
            "warning_failures": self.warning_failures,
            "suites": {table: suite.to_json() for table, suite in self.suites.items()},
            "data_docs": self.data_docs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ValidationSummary:
        return cls(
            run=data["run"],
            validated_at=data["validated_at"],
            code_version=data["code_version"],
            parameters=data["parameters"],
            suites={table: SuiteSummary.from_json(suite) for table, suite in data["suites"].items()},
            data_docs=data["data_docs"],
        )


def _json_value(value: Any) -> Any:
    """An example as JSON allows it: NaN (a missing float in pandas) becomes null."""
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
