"""The segmenter a configuration names: the project's model behind its localizer, or an external model's parenchyma
with the cortex method."""

from __future__ import annotations

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
        folder = config.path(settings.folder) / settings.name
        if not folder.is_dir():
            raise SettingError(f"model.name: model folder {folder} not found")
        model = Model.from_folder(folder)
        localizer = localizer_of(model, settings.localizer, config.path(settings.folder))
        project = Segmenter(model, settings.device, settings.mirroring, settings.tile_step_size, settings.cascade, settings.runtime, localizer)
    if settings.parenchyma is ParenchymaSource.PROJECT:
        assert project is not None
        return project
    external = ExternalModel.from_config(settings.external, config.path(settings.external.folder))
    return ExternalSegmenter(external, settings.cortex, project, settings.device, settings.runtime)
