"""What a dataset card may say about where a release comes from: the facts the run manifests record.

The card never states more than the stages recorded:

- the input (ingest entry, ``source``): ``synthetic`` (``rrec sample``, with its generator,
  seed and settings), ``real`` (file names, sizes, content hashes, Hub repository and
  revision), or ``unknown`` when the run predates that record; an unknown source is never
  called real;
- the annotator (annotate entry): its kind (``template`` is a deterministic offline stand-in,
  ``openai``/``openai-batch`` an LLM) and model;
- the judge (judge entry): ``heuristic`` (no LLM) or ``llm`` with its model.

:func:`rebuild_configs` turns the recorded settings back into the ``rrec run`` config that
rebuilds a version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from core.config import StageSettings

AMAZON_REVIEWS_2023 = "McAuley-Lab/Amazon-Reviews-2023"
LLM_ANNOTATORS = ("openai", "openai-batch")
SYNTHETIC, REAL, UNKNOWN = "synthetic", "real", "unknown"
# Ingest settings that `rrec run` fills in per domain from `run.inputs`, not from the `ingest` section.
_PER_DOMAIN_INGEST = ("reviews", "meta", "domain", "hub_repo")


@dataclass(frozen=True)
class SourceFacts:
    """The recorded input of one domain."""

    kind: str
    synthetic: dict[str, Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed(self) -> Any:
        return (self.synthetic or {}).get("seed")

    @property
    def generator(self) -> str:
        return str((self.synthetic or {}).get("generator") or "rrec sample")


@dataclass(frozen=True)
class AnnotationFacts:
    """The recorded annotator of one domain."""

    annotator: str
    model: str | None
    prompt_version: str | None

    @property
    def llm(self) -> bool:
        """Whether an LLM wrote the rationales (never true for the template annotator)."""
        return self.annotator in LLM_ANNOTATORS


@dataclass(frozen=True)
class JudgeFacts:
    """The recorded judge of one domain."""

    kind: str
    name: str | None
    model: str | None

    @property
    def llm(self) -> bool:
        return self.kind == "llm"


@dataclass(frozen=True)
class DomainProvenance:
    """Everything the card states about how one config was made."""

    config: str
    domain: str
    source: SourceFacts
    annotation: AnnotationFacts
    judge: JudgeFacts | None


def source_facts(ingest: dict[str, Any] | None) -> SourceFacts:
    """The ingest entry's ``source`` record; ``unknown`` when it is absent or malformed."""
    source = (ingest or {}).get("source")
    if not isinstance(source, dict) or source.get("kind") not in (SYNTHETIC, REAL):
        return SourceFacts(UNKNOWN)
    files = [f for f in source.get("files") or [] if isinstance(f, dict)]
    synthetic = source.get("synthetic") if isinstance(source.get("synthetic"), dict) else None
    if source["kind"] == SYNTHETIC:
        return SourceFacts(SYNTHETIC, synthetic or {}, files)
    return SourceFacts(REAL, None, files)


def annotation_facts(annotate: dict[str, Any] | None) -> AnnotationFacts:
    """The annotate entry's annotator kind and model (``unknown`` when not recorded)."""
    entry = annotate or {}
    return AnnotationFacts(str(entry.get("annotator") or UNKNOWN), entry.get("model"), entry.get("prompt_version"))


def judge_facts(judge: dict[str, Any] | None) -> JudgeFacts | None:
    """The judge entry's kind: ``heuristic`` (no LLM) or ``llm``; None when no judge ran."""
    if not judge:
        return None
    name = judge.get("judge")
    kind = judge.get("judge_kind") or ("heuristic" if name in (None, "heuristic") else "llm")
    return JudgeFacts(str(kind), name, judge.get("model") if kind == "llm" else None)


def domain_provenance(config: str, domain: str, stages: dict[str, dict[str, Any]]) -> DomainProvenance:
    """The provenance facts of one config from its run's manifest entries."""
    return DomainProvenance(
        config=config,
        domain=domain,
        source=source_facts(stages.get("ingest")),
        annotation=annotation_facts(stages.get("annotate")),
        judge=judge_facts(stages.get("judge")),
    )


def title_note(provenances: list[DomainProvenance]) -> str:
    """What the card's title line adds about the data: synthetic data is named as such there."""
    kinds = {p.source.kind for p in provenances}
    if kinds == {REAL}:
        return ""
    if kinds == {SYNTHETIC}:
        return "synthetic data"
    synthetic = [p.config for p in provenances if p.source.kind == SYNTHETIC]
    unknown = [p.config for p in provenances if p.source.kind == UNKNOWN]
    parts = [f"synthetic: {', '.join(synthetic)}"] if synthetic else []
    parts += [f"source not recorded: {', '.join(unknown)}"] if unknown else []
    return "; ".join(parts)


def source_datasets(provenances: list[DomainProvenance]) -> list[str] | None:
    """The YAML ``source_datasets``: only real inputs name a dataset (their Hub repositories, else Amazon Reviews 2023)."""
    real = [p for p in provenances if p.source.kind == REAL]
    if not real:
        return None
    repos = sorted({str(f["hub_repo"]) for p in real for f in p.source.files if f.get("hub_repo")})
    return repos or [AMAZON_REVIEWS_2023]


def source_statement(provenance: DomainProvenance) -> str:
    """One sentence on where a config's input came from, as recorded."""
    source = provenance.source
    if source.kind == "synthetic":
        return (
            f"**synthetic data**: generated by `{source.generator}` (seed {source.seed}) in the raw format of Amazon "
            "Reviews 2023; no real users, reviews or products"
        )
    if source.kind == "real":
        repos = sorted({str(f["hub_repo"]) for f in source.files if f.get("hub_repo")})
        where = f" from the Hub dataset {', '.join(f'`{r}`' for r in repos)}" if repos else ""
        return f"real review and metadata files{where} ({len(source.files)} file(s), listed below with their content hashes)"
    return "**not recorded**: the run's ingest stage predates provenance records, so whether the input was synthetic or real is unknown"


def annotation_statement(provenance: DomainProvenance) -> str:
    """One sentence on who wrote a config's rationales, as recorded: an LLM only when an LLM annotator ran."""
    annotation = provenance.annotation
    if annotation.llm:
        return f"written by an LLM: annotator `{annotation.annotator}`, model `{annotation.model or 'not recorded'}`"
    if annotation.annotator == "template":
        return (
            "written by the deterministic `template` annotator (no LLM: fixed sentences filled in from the history, "
            "for offline demos and tests); they are not LLM rationales"
        )
    return f"written by annotator `{annotation.annotator}` (its kind was not recorded)"


def judge_statement(provenance: DomainProvenance) -> str:
    """One sentence on the judge that scored a config's rationales."""
    judge = provenance.judge
    if judge is None:
        return "No judge pass was run for this config."
    if judge.llm:
        return f"Rationale quality judged by an LLM (`{judge.model or judge.name}`)"
    return "Rationale quality scored by the `heuristic` stand-in judge (rules, not an LLM; see `pipeline/judge.py`)"


def _settings_types() -> dict[str, type[StageSettings]]:
    """The settings model of each stage `rrec run` configures (imported here: the card needs them only to rebuild)."""
    from pipeline.annotate import AnnotateSettings
    from pipeline.filter import FilterSettings
    from pipeline.ingest import IngestSettings
    from pipeline.judge import JudgeSettings
    from pipeline.sequences import SequencesSettings
    from validation.runner import ValidateSettings

    return {
        "ingest": IngestSettings,
        "sequences": SequencesSettings,
        "annotate": AnnotateSettings,
        "filter": FilterSettings,
        "judge": JudgeSettings,
        "validate": ValidateSettings,
    }


def stage_sections(stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The config sections that reproduce the recorded settings of a run's stages.

    A stage records the settings that change its output; those that are settings of its
    command (not derived values such as a prompt version) become its section.
    """
    sections: dict[str, dict[str, Any]] = {}
    for name, model in _settings_types().items():
        entry = stages.get(name)
        if not entry:
            continue
        skip = _PER_DOMAIN_INGEST if name == "ingest" else ()
        values = {k: v for k, v in (entry.get("config") or {}).items() if k in model.model_fields and k not in skip}
        if values:
            sections[name] = values
    return sections


def _inputs_section(provenance: DomainProvenance) -> dict[str, Any]:
    files = provenance.source.files
    reviews = [str(f["name"]) for f in files if f.get("role", "reviews") == "reviews"]
    meta = [str(f["name"]) for f in files if f.get("role") == "meta"]
    return {"reviews": reviews or [f"<{provenance.domain} review files>"], **({"meta": meta} if meta else {})}


def rebuild_configs(
    provenances: list[DomainProvenance],
    stages: dict[str, dict[str, dict[str, Any]]],
    card: dict[str, Any],
    release: dict[str, Any],
) -> list[tuple[list[str], str]]:
    """The ``rrec run`` config(s) that rebuild a release, as YAML, with the configs each one covers.

    One config when every domain was built with the same stage settings from the same kind of
    input (the usual case, ``rrec run``); otherwise one per config. ``stages`` maps each config
    to its run's manifest entries; ``card`` and ``release`` are those sections' settings.
    """
    groups: dict[str, tuple[list[DomainProvenance], dict[str, Any]]] = {}
    for provenance in provenances:
        sections = stage_sections(stages[provenance.config])
        generator = {k: v for k, v in (provenance.source.synthetic or {}).get("settings", {}).items() if k != "domains"}
        key = json.dumps([sections, provenance.source.kind, generator], sort_keys=True, default=str)
        groups.setdefault(key, ([], sections))[0].append(provenance)
    configs = []
    for members, sections in groups.values():
        document: dict[str, Any] = {}
        first = members[0].source
        if first.kind == SYNTHETIC:
            document["sample"] = {**(first.synthetic or {}).get("settings", {}), "domains": [m.domain for m in members]}
            document["run"] = {"judge": all(m.judge is not None for m in members)}
        else:
            document["run"] = {
                "inputs": {m.domain: _inputs_section(m) for m in members},
                "judge": all(m.judge is not None for m in members),
            }
        document.update(sections)
        document["card"] = card
        document["release"] = release
        configs.append(([m.config for m in members], yaml.safe_dump(document, sort_keys=False, allow_unicode=True)))
    return configs
