"""A trained nnU-Net network run by ONNX Runtime on the CPU, in place of torch, with the same weights.

On a CPU, ONNX Runtime runs a tile of the shipped model several times faster than torch, with the same class at every
voxel (figures in ``benchmarks/inference.py``). nnU-Net's sliding window keeps calling
``predictor.network(tile)``; this module answers those calls. The network is exported once, into a temporary folder
that is removed at once, when the predictor is loaded: nothing is written next to the model.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class OnnxNetwork(torch.nn.Module):
    """Answers ``network(tile)`` like the torch network it was exported from (batch size may vary)."""

    def __init__(self, network: torch.nn.Module, weights: Mapping[str, Any], tile: tuple[int, ...], channels: int, threads: int) -> None:
        """``network`` holds ``weights`` already (nnU-Net loads the first fold's at initialisation)."""
        super().__init__()
        self._network = [network.eval()]  # in a list: not a submodule, so state_dict keys stay nnU-Net's
        self._tile = (1, channels, *tile)
        self._threads = threads
        self._exported = weights
        self._session = self._export()

    def _export(self) -> Any:
        import onnxruntime

        # torch warns that instance norm is exported with train=True: it normalises by each tile's own statistics,
        # which is what nnU-Net's instance norm (no running statistics) does in eval mode too.
        with torch.no_grad(), warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
            warnings.filterwarnings("ignore", message=".*instance_norm.*")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(
                self._network[0],
                (torch.zeros(self._tile),),
                Path(folder) / "network.onnx",
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
            model = (Path(folder) / "network.onnx").read_bytes()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.log_severity_level = 3
        log.info("network exported to ONNX (%.1f MB) for ONNX Runtime %s, %d threads", len(model) / 1e6, onnxruntime.__version__, self._threads)
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """nnU-Net loads each fold's weights before predicting: export again only when they are other weights."""
        if state_dict is not self._exported:
            result = self._network[0].load_state_dict(state_dict, strict=strict, assign=assign)
            self._exported = state_dict
            self._session = self._export()
            return result
        return torch.nn.modules.module._IncompatibleKeys([], [])

    def forward(self, tile: torch.Tensor) -> torch.Tensor:
        logits = self._session.run(None, {"image": np.ascontiguousarray(tile.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(logits)
