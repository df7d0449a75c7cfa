"""Prediction from trained models: safe weight loading, scene inputs and the 3D predictor.

- :mod:`.weights`: ``torch.load(weights_only=True)`` with a clear refusal, run configs, target checks.
- :mod:`.scene`: ``.ply`` / ``.pcd`` / ``.npy`` / ScanNet scan / prepared scene -> :class:`Scene3D`.
- :mod:`.predictor3d`: :class:`Predictor3D` and its answer :class:`Mask3D`.
- :mod:`.outputs`: the files ``grounding predict`` writes.

Export folders (``model.safetensors`` + ``config.yaml``) are written and read by :mod:`grounding.export`.
"""

from grounding.predict.predictor3d import Mask3D, Predictor3D
from grounding.predict.scene import Scene3D, load_scene
from grounding.predict.weights import UnsafeCheckpointError, safe_torch_load

__all__ = ["Mask3D", "Predictor3D", "Scene3D", "UnsafeCheckpointError", "load_scene", "safe_torch_load"]
