"""A zoo: which models (the mix), and the manifest that lists what was built.

The mix says how many models of each attack (zoo.ATTACKS) and the settings they share. Models of
one attack take the seeds seed, seed + 1, ...; so `patch-3` and `clean-3` are drawn on the same faces.
The manifest has one row per model, as JSON (manifest.json: nested, exact floats) and as CSV
(manifest.csv: a model's triggers, targets and ASRs as ';'-separated lists, in the same order).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from badnet_prune.synth.zoo import (
    ATTACKS,
    Alpha,
    Attack,
    Classes,
    PoisonRate,
    ZooModel,
    ZooSettings,
    check_alpha_range,
    default_settings,
    model_name,
)

MAX_MODELS = 100_000
DEFAULT_MIX: dict[Attack, int] = {"clean": 3, "sunglasses": 3, "pruning-aware": 3, "patch": 3, "blended": 3,
                                  "multi-trigger": 3}
MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"
CSV_COLUMNS = ("name", "folder", "attack", "backdoored", "seed", "classes", "poison_rate", "triggers", "targets",
               "clean_valid_accuracy", "clean_test_accuracy", "asr_valid", "asr_test", "prune_alone_asr_10",
               "build_seconds")

Count = Annotated[int, Field(ge=0, le=MAX_MODELS)]
Seed = Annotated[int, Field(ge=0, lt=2**31)]


class ZooMix(BaseModel):
    """A zoo's definition, as --mix FILE (TOML) gives it; every key is optional.

    seed: the first seed of each attack. size: "quick" (tests; about 20 s of CPU a model) or "full".
    classes: identities (default 10 quick, 32 full). poison_rate, blend_alpha, blend_test_alpha: as
    zoo.ZooSettings. models: how many of each attack, e.g. { clean = 2, patch = 5 } (default DEFAULT_MIX).
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    seed: Seed = 0
    size: Literal["quick", "full"] = "quick"
    classes: Classes | None = None
    poison_rate: PoisonRate = 0.1
    blend_alpha: Alpha = 0.2
    blend_test_alpha: tuple[Alpha, Alpha] = (0.2, 0.2)
    models: dict[Attack, Count] = Field(default_factory=lambda: dict(DEFAULT_MIX))

    @field_validator("blend_test_alpha", mode="before")
    @classmethod
    def _pair(cls, value: object) -> object:
        """TOML's [low, high] arrives as a list."""
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _some_models(self) -> ZooMix:
        check_alpha_range(self.blend_test_alpha)
        if not sum(self.models.values()):
            raise ValueError("the mix has no models: give at least one attack a count above 0")
        return self

    def settings(self) -> ZooSettings:
        base = default_settings(self.size == "quick", self.classes)
        return ZooSettings(classes=base.classes, quick=base.quick, poison_rate=self.poison_rate,
                           blend_alpha=self.blend_alpha, blend_test_alpha=self.blend_test_alpha)

    def plan(self) -> list[PlannedModel]:
        """Every model, attack by attack in ATTACKS order, seeds counting up from `seed`."""
        return [PlannedModel(attack, self.seed + index) for attack in ATTACKS
                for index in range(self.models.get(attack, 0))]


def spread(models: int) -> dict[Attack, int]:
    """`models` models over the attacks, as evenly as they divide (the first attacks get the remainder)."""
    share, rest = divmod(models, len(ATTACKS))
    return {attack: share + (index < rest) for index, attack in enumerate(ATTACKS)}


@dataclass(frozen=True)
class PlannedModel:
    attack: Attack
    seed: int

    @property
    def name(self) -> str:
        return model_name(self.attack, self.seed)


def manifest_row(record: ZooModel, folder: str) -> dict:
    """One model's manifest row: B's figures are percent, on its test files (and valid files)."""
    return {
        "name": record.name, "folder": folder, "attack": record.attack, "backdoored": record.backdoored,
        "seed": record.seed, "classes": record.settings.classes,
        "poison_rate": record.settings.poison_rate if record.backdoored else 0.0,
        "triggers": [t.name for t in record.triggers],
        "targets": {t.name: t.target for t in record.triggers},
        "clean_valid_accuracy": record.clean_valid_accuracy, "clean_test_accuracy": record.clean_test_accuracy,
        "asr_valid": {t.name: t.asr_valid for t in record.triggers},
        "asr_test": {t.name: t.asr_test for t in record.triggers},
        "promise": record.promise,
        "build_seconds": record.build_seconds,
    }


def write_manifest(out: Path, rows: list[dict], settings: ZooSettings) -> None:
    """out/manifest.json ({"settings", "models"}) and out/manifest.csv, one row per model."""
    document = {"settings": settings.model_dump(mode="json"), "models": rows}
    (out / MANIFEST_JSON).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    with (out / MANIFEST_CSV).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            flat = {key: row[key] for key in CSV_COLUMNS if key in row}
            flat["prune_alone_asr_10"] = (row["promise"] or {}).get("prune_alone_asr_bd_valid")
            for key in ("targets", "asr_valid", "asr_test"):
                flat[key] = ";".join(str(row[key][trigger]) for trigger in row["triggers"])
            flat["triggers"] = ";".join(row["triggers"])
            flat["backdoored"] = str(row["backdoored"]).lower()
            writer.writerow(flat)
