"""The paper's three variants (Fig. 2), defined once for training, evaluation and the table.

(A) trained with rationales, infers rationale then item; (B) the same model prompted for the
item only; (C) trained on item-only targets, prompted for rationale then item at inference.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One variant: how its model is trained and how it is prompted at inference."""

    name: str
    trained_with_rationale: bool
    infers_rationale: bool

    @property
    def model_variant(self) -> str:
        """The SFT run the variant evaluates (B reuses A's model)."""
        return "A" if self.trained_with_rationale else "C"


VARIANTS = (Variant("A", True, True), Variant("B", True, False), Variant("C", False, True))
BY_NAME = {variant.name: variant for variant in VARIANTS}
