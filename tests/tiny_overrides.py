"""Hydra overrides that shrink each synthetic experiment to a model that runs in seconds on a CPU.

Only widths, depths and sizes change: modules, losses, postprocessing and the data pipeline stay the experiment's.
Shared by the prediction tests (``tests/predict``) and the data-parallel test (``tests/engine``); ``tests/`` is on
``sys.path`` because it holds the root ``conftest.py``.
"""

from __future__ import annotations

# 3D: a 3-level U-Net and a one-layer decoder of width 32.
# 2D: one-block ViTs of width 32 on a 64 px canvas, SAM's decoder (DIT) and the retrieval head at width 32.
TINY: dict[str, list[str]] = {
    "rgsan": ["experiment=rgsan_synthetic", "model.net.d_model=32", "model.net.num_heads=2", "model.net.ffn_dim=64",
              "model.net.num_layers=1", "model.net.backbone.levels=3"],
    "mdin": ["experiment=mdin_synthetic", "model.net.d_model=32", "model.net.num_heads=2", "model.net.ffn_dim=64",
             "model.net.num_layers=1", "model.net.num_seeds=16", "model.net.num_queries=8",
             "model.net.backbone.levels=3", "model.postprocess.min_points=5"],
    "dit": ["experiment=dit_synthetic", "data.source.canvas=64", "model.net.image_encoder.img_size=64",
            "model.net.image_encoder.embed_dim=32", "model.net.image_encoder.depth=1",
            "model.net.image_encoder.num_heads=2", "model.net.image_encoder.out_chans=32",
            "model.net.prompt_encoder.embed_dim=32", "model.net.mask_decoder.transformer_dim=32",
            "model.net.mask_decoder.mlp_dim=64", "model.net.mask_decoder.num_heads=2"],
    "retrieval": ["experiment=retrieval_synthetic", "data.source.canvas=64", "model.net.backbone.img_size=64",
                  "model.net.backbone.embed_dim=32", "model.net.backbone.depth=1", "model.net.backbone.num_heads=2",
                  "model.net.backbone.out_chans=32", "model.net.pyramid_dim=16", "model.net.head.d_model=32",
                  "model.net.head.num_heads=2", "model.net.head.ffn_dim=64"],
}
