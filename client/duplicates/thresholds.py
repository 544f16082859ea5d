"""The cosine and pHash thresholds of each tier, calibrated per architecture (docs/DEDUP.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace

TIERS = ("exact", "near", "similar")  # strongest first
RANK = {tier: i for i, tier in enumerate(TIERS)}


@dataclass(frozen=True)
class Thresholds:
    near: float  # cosine that makes a near duplicate on its own
    near_low: float  # lower cosine that does when the pHashes agree too
    hash_bits: int  # most differing bits of the 64-bit pHash (mirror-aware) for the near_low band
    similar: float  # cosine for the similar tier
    calibrated: bool = True

    def lowest(self, similar: bool) -> float:
        """The lowest cosine any link can have: pairs below it need not be looked at."""
        return min(self.near_low, self.near, self.similar if similar else float("inf"))


# Per architecture, from bench/dedup_calibration.py (docs/DEDUP.md has the tables). The
# embedding's geometry differs between models, so a threshold never carries over.
CALIBRATED: dict[str, Thresholds] = {
    "efficientnet_lite0": Thresholds(near=0.80, near_low=0.65, hash_bits=12, similar=0.55),
}
# For a model nobody has calibrated: a cautious guess (few false groups, fewer crops found).
UNCALIBRATED = Thresholds(near=0.92, near_low=0.60, hash_bits=10, similar=0.80, calibrated=False)


def thresholds_for(architecture: str, **overrides: float | int | None) -> Thresholds:
    """The calibrated thresholds of ``architecture`` (else a cautious guess), with any overrides that are not None."""
    base = CALIBRATED.get(architecture, UNCALIBRATED)
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **given) if given else base
