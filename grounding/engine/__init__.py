"""Training and evaluation engine (Lightning + hydra). Layer 4: it never names a dataset or a model."""

from grounding.engine.datamodule import GroundingDataModule
from grounding.engine.task import GroundingTask

__all__ = ["GroundingDataModule", "GroundingTask"]
