"""Did the defenses remove each backdoor, by which network and at what cost: one answer per model and poison,
the same in defend's table, summary.json and the report.

A backdoor counts as removed by a repaired network (G, G'' and each later defense's) at a setting where its
ASR on the poison's test set is at most the ASR bound. Of the networks and settings that removed it, the
one with the smallest clean accuracy drop from B is named; where none did, the lowest ASR seen. A repaired
net's false alarms (clean test images it flags as N) above the clean bound are flagged: such a G rejects
too many clean inputs to deploy, whatever it does to the backdoor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from badnet_prune.db.model_results import ModelResults
from badnet_prune.pipeline.contract import stages
from badnet_prune.pipeline.presentation import Network, setting_label

ASR_BOUND = 5.0  # percent: the report's and the leaderboard's default
CLEAN_BOUND = 2.0  # points of clean test accuracy, and percent of clean test images flagged


@dataclass(frozen=True)
class Verdict:
    poison: str
    removed: bool
    network: str | None  # the repaired network named (None: nothing was measured)
    label: str | None  # what people read: "G''"
    setting: str | None  # its setting's key ("0.02")
    b_asr: float | None
    asr: float | None
    clean_drop: float | None  # points, B's clean test accuracy minus the network's
    false_alarms: float | None  # percent of clean test images flagged
    within_clean_bound: bool | None
    false_alarms_above_bound: bool | None

    def sentence(self, asr_bound: float, clean_bound: float) -> str:
        """One line for defend's table: 'sunglasses: removed by G'' at 2% (ASR 1.33%, clean drop 0.40 points, ...)'."""
        if self.network is None:
            return f"{self.poison}: not measured (no repaired network was evaluated)"
        where = f"{self.label} at {setting_label(self.setting or '')}"
        cost = (f"ASR {self.asr:.2f}%, clean drop {self.clean_drop:.2f} points, false alarms "
                f"{self.false_alarms:.2f}%")
        warning = ""
        if self.false_alarms_above_bound:
            warning = f"; false alarms above the {clean_bound:g}% bound"
        elif self.within_clean_bound is False:
            warning = f"; clean drop above the {clean_bound:g}-point bound"
        if self.removed:
            return f"{self.poison}: removed by {where} ({cost}){warning}"
        return f"{self.poison}: kept (ASR above {asr_bound:g}% everywhere); lowest ASR by {where} ({cost}){warning}"


def repaired(results: ModelResults) -> list[Network]:
    """The repaired networks evaluated for this model, in stage order."""
    evaluated = {name for name, _ in results.networks}
    return [network for stage in stages() if stage.presentation is not None
            for network in stage.presentation.networks if network.repaired and network.name in evaluated]


def model_verdicts(results: ModelResults, asr_bound: float = ASR_BOUND,
                   clean_bound: float = CLEAN_BOUND) -> list[Verdict]:
    """Per poison of the model, the verdict as the module's docstring defines it."""
    b_clean = results.b.clean_accuracy
    verdicts = []
    for poison in results.poisons:
        measured = [(network, key, metrics) for network in repaired(results) for key in results.keys(network.name)
                    if (metrics := results.networks[(network.name, key)]).clean_accuracy is not None
                    and poison in metrics.asr and b_clean is not None]
        removed = [entry for entry in measured if entry[2].asr[poison] <= asr_bound]
        if removed:
            network, key, metrics = min(removed, key=lambda entry: b_clean - entry[2].clean_accuracy)
        elif measured:
            network, key, metrics = min(measured, key=lambda entry: entry[2].asr[poison])
        else:
            verdicts.append(Verdict(poison, False, None, None, None, results.b.asr.get(poison), None, None, None,
                                    None, None))
            continue
        drop = b_clean - metrics.clean_accuracy
        alarms = metrics.false_alarms
        verdicts.append(Verdict(
            poison=poison, removed=bool(removed), network=network.name, label=network.label, setting=key,
            b_asr=results.b.asr.get(poison), asr=metrics.asr[poison], clean_drop=drop, false_alarms=alarms,
            within_clean_bound=drop <= clean_bound,
            false_alarms_above_bound=None if alarms is None else alarms > clean_bound,
        ))
    return verdicts


def verdict_json(results: ModelResults, asr_bound: float = ASR_BOUND, clean_bound: float = CLEAN_BOUND) -> dict:
    """summary.json's verdict: the bounds, and per poison the booleans and figures."""
    verdicts: dict[str, Any] = {v.poison: asdict(v) for v in model_verdicts(results, asr_bound, clean_bound)}
    for entry in verdicts.values():
        entry.pop("poison")
    return {"asr_bound": asr_bound, "clean_bound": clean_bound, "poisons": verdicts}
