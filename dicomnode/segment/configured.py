"""The segmenter a configuration names: the project's model behind its localizer, or an external model's parenchyma
with the cortex method; and shadow mode's candidate."""

from __future__ import annotations

from pathlib import Path

from dicomnode.config import NodeConfig, SettingError
from dicomnode.options import CortexMethod, ParenchymaSource
from dicomnode.segment.external import ExternalModel, ExternalSegmenter
from dicomnode.segment.model import Model, SeriesSegmenter, localizer_of
from dicomnode.segment.segmenter import Segmenter


def load_segmenter(config: NodeConfig) -> SeriesSegmenter:
    """The configured segmenter: the project's model, or an external model's parenchyma with the cortex method."""
    settings = config.model
    project = None
    if settings.parenchyma is ParenchymaSource.PROJECT or settings.cortex is CortexMethod.MODEL:
        project = _project(config, model_folder(config, settings.name, "model.name"), settings.localizer)
    if settings.parenchyma is ParenchymaSource.PROJECT:
        assert project is not None
        return project
    external = ExternalModel.from_config(settings.external, config.path(settings.external.folder))
    return ExternalSegmenter(external, settings.cortex, project, settings.device, settings.runtime)


def load_candidate(config: NodeConfig) -> Segmenter:
    """Shadow mode's candidate (``shadow.model``, with ``shadow.localizer``), run with the live model's settings."""
    return _project(config, model_folder(config, config.shadow.model, "shadow.model"), config.shadow.localizer)


def model_folder(config: NodeConfig, name: str, key: str) -> Path:
    """The folder of model ``name`` in ``model.folder``; a SettingError naming ``key`` where it is not there."""
    folder = config.path(config.model.folder) / name
    if not folder.is_dir():
        raise SettingError(f"{key}: model folder {folder} not found")
    return folder


def _project(config: NodeConfig, folder: Path, localizer_setting: str) -> Segmenter:
    settings = config.model
    model = Model.from_folder(folder)
    localizer = localizer_of(model, localizer_setting, config.path(settings.folder))
    return Segmenter(model, settings.device, settings.mirroring, settings.tile_step_size, settings.cascade, settings.runtime, localizer)
