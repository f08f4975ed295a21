"""One job, the same for ``dicomnode run`` and the service: a study's instances through the pipeline, and its results
saved into a folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dicomnode.base.uids import RANDOM_UIDS, ResultUids
from dicomnode.config import NodeConfig
from dicomnode.instance import Instance
from dicomnode.node.pipeline import Priors, Processed, failed, no_priors, process_study
from dicomnode.outbound.save import Saved, save_results
from dicomnode.segment.model import SeriesSegmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ran:
    """What a job gave: the study's processing, and the result files saved (none for a study without result)."""

    processed: Processed
    saved: list[Saved]


def process_job(
    name: str,
    instances: list[Instance],
    config: NodeConfig,
    segmenter: SeriesSegmenter,
    folder: Path,
    uids: ResultUids = RANDOM_UIDS,
    priors: Priors = no_priors,
) -> Ran:
    """Process ``instances`` and save the results into ``folder``; an unexpected error is the job's failure, never
    the caller's (``name`` says which job in the log)."""
    try:
        processed = process_study(instances, config, segmenter, uids, priors)
        saved = save_results(processed.results, folder) if processed.results is not None else []
    except Exception as exc:  # a job must never take the node down
        log.exception("%s failed", name)
        return Ran(failed(exc), [])
    stages = ", ".join(
        f"{stage} {seconds:.1f} s" + (f" {processed.peak_gib[stage]:.2f} GiB" if stage in processed.peak_gib else "")
        for stage, seconds in processed.timings.items()
    )
    log.info("%s stages (seconds, peak memory): %s", name, stages)
    return Ran(processed, saved)
