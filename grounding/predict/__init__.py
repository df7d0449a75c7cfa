"""Prediction from trained models: safe weight loading, scene and image inputs, the 3D and 2D predictors.

- :mod:`.weights`: ``torch.load(weights_only=True)`` with a clear refusal, run configs, target checks.
- :mod:`.scene`: ``.ply`` / ``.pcd`` / ``.npy`` / ScanNet scan / prepared scene -> :class:`Scene3D`.
- :mod:`.predictor3d`: :class:`Predictor3D` and its answer :class:`Mask3D`.
- :mod:`.outputs`: the files ``grounding predict`` writes.
- :mod:`.image`: photos (path, array, PIL) and candidate boxes (given, ``boxes.json`` or SAM's automatic masks).
- :mod:`.predictor2d`: :class:`Predictor2D` (DIT / box retrieval) and its answers :class:`Mask2D`, :class:`Box2D`.
- :mod:`.outputs2d`: the files ``grounding predict --image`` writes.

Export folders (``model.safetensors`` + ``config.yaml``) are written and read by :mod:`grounding.export`.
"""

from grounding.predict.image import load_image
from grounding.predict.predictor2d import Box2D, Mask2D, Predictor2D
from grounding.predict.predictor3d import Mask3D, Predictor3D
from grounding.predict.scene import Scene3D, load_scene
from grounding.predict.weights import UnsafeCheckpointError, safe_torch_load

__all__ = ["Box2D", "Mask2D", "Mask3D", "Predictor2D", "Predictor3D", "Scene3D", "UnsafeCheckpointError",
           "load_image", "load_scene", "safe_torch_load"]
