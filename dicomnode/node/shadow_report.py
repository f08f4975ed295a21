"""What shadow mode showed: the candidate's agreement with the live model per structure over the last
``shadow.last_n`` studies, as the status page, ``dicomnode status`` and ``/metrics`` show it, and as
``dicomnode shadow-report --record`` writes it into the candidate's model card (``shadow:``)."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import yaml
from prometheus_client.core import GaugeMetricFamily, Metric

from dicomnode.base.files import write_atomically
from dicomnode.config import NodeConfig
from dicomnode.store import Store
from dicomnode.store.shadow import StructureAgreement


def agreement_of(config: NodeConfig, store: Store) -> list[StructureAgreement]:
    """The configured candidate's agreement per structure; none where shadow mode is off or nothing ran yet."""
    return store.shadow_agreement(config.model.name, config.shadow.model, config.shadow.last_n) if config.shadow.model else []


def heading(config: NodeConfig) -> str:
    """What the agreement shown compares, and over how many studies."""
    return f"Shadow model {config.shadow.model} beside {config.model.name}: agreement over the last {config.shadow.last_n} studies at most"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def shadow_lines(config: NodeConfig, store: Store) -> list[str]:
    """``dicomnode status``'s lines on shadow mode; none where it is off."""
    if not config.shadow.model:
        return []
    found = agreement_of(config, store)
    lines = [heading(config)] + ([] if found else ["    no study compared yet"])
    for a in found:
        lines.append(
            f"    {a.structure:<10} {a.studies} studies ({a.kidneys} kidneys): |difference| mean {a.mean_abs_diff_ml:.1f} ml"
            f" ({_percent(a.mean_abs_diff_percent)}), largest {a.max_abs_diff_ml:.1f} ml ({_percent(a.max_abs_diff_percent)});"
            f" Dice mean {a.mean_dice:.3f}, lowest {a.min_dice:.3f}"
        )
    return lines


def shadow_section(config: NodeConfig, store: Store) -> str:
    """The status page's "Shadow model" section; empty where shadow mode is off."""
    if not config.shadow.model:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(a.structure)}</td><td>{a.studies}</td><td>{a.kidneys}</td><td>{a.mean_abs_diff_ml:.1f}</td>"
        f"<td>{e(_percent(a.mean_abs_diff_percent))}</td><td>{a.max_abs_diff_ml:.1f}</td><td>{e(_percent(a.max_abs_diff_percent))}</td>"
        f"<td>{a.mean_dice:.3f}</td><td>{a.min_dice:.3f}</td></tr>"
        for a in agreement_of(config, store)
    )
    return f"""<h2 id="shadow">Shadow model</h2>
<p>{e(heading(config))}; its results are never sent. Differences are the candidate's volume less the live one, per kidney.</p>
<table id="shadow-agreement"><tr><th>Structure</th><th>Studies</th><th>Kidneys</th><th>Mean |difference| (ml)</th>
<th>Mean |difference| (%)</th><th>Largest |difference| (ml)</th><th>Largest |difference| (%)</th><th>Mean Dice</th><th>Lowest Dice</th></tr>
{rows or "<tr><td colspan='9'>no study compared yet</td></tr>"}</table>
"""


class ShadowCollector:
    """Prometheus gauges of the candidate's agreement, read from the store at each scrape (shadow mode on only)."""

    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config, self.store = config, store

    def collect(self) -> Iterable[Metric]:
        found = agreement_of(self.config, self.store)
        about = f"of shadow model {self.config.shadow.model} against {self.config.model.name}, per structure, over its last studies"
        yield GaugeMetricFamily(
            "dicomnode_shadow_studies", "Studies the shadow model's agreement is counted over", value=max((a.studies for a in found), default=0)
        )
        gauges = {
            "mean_abs_diff_ml": "Mean absolute volume difference (ml)",
            "max_abs_diff_ml": "Largest absolute volume difference (ml)",
            "mean_abs_diff_percent": "Mean absolute volume difference (% of the live volume)",
            "mean_dice": "Mean Dice between the live and the shadow masks",
            "min_dice": "Lowest Dice between the live and the shadow masks",
        }
        for name, what in gauges.items():
            gauge = GaugeMetricFamily(f"dicomnode_shadow_{name}", f"{what} {about}", labels=["structure"])
            for a in found:
                value = getattr(a, name)
                if value is not None:
                    gauge.add_metric([a.structure], value)
            yield gauge


def record_on_card(config: NodeConfig, store: Store, today: dt.date) -> Path:
    """Write what the shadow run showed into the candidate's model card under ``shadow:`` (replacing an earlier
    record); returns the card. A ValueError where shadow mode is off or no study was compared yet."""
    if not config.shadow.model:
        raise ValueError("shadow.model: is empty (shadow mode is off)")
    found = agreement_of(config, store)
    if not found:
        raise ValueError(f"shadow.model: {config.shadow.model} has compared no study yet")
    card = config.path(config.model.folder) / config.shadow.model / "model.yaml"
    data = yaml.safe_load(card.read_text()) if card.is_file() else None
    if not isinstance(data, dict):
        raise ValueError(f"shadow.model: model card {card} not found")
    data["shadow"] = {
        "recorded": today.isoformat(),
        "live_model": config.model.name,
        "studies": max(a.studies for a in found),
        "structures": {a.structure: {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(a).items() if k != "structure"} for a in found},
    }
    write_atomically(card, yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode())
    return card
