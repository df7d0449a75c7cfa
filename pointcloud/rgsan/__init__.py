"""RG-SAN (NeurIPS 2024): rule-guided spatial awareness network for 3D referring expression segmentation.

See ``docs/rgsan.md`` and rgsan-mdin spec §4. Public pieces: the model, its criterion and postprocess (the engine
contract), and the building blocks (dependency graphs, DDI, contextual RPE, the TLM decoder).
"""

from datasets.pointmask import mask_to_rle, rle_to_mask
from pointcloud.rgsan.criterion import RGSANCriterion, superpoint_iou
from pointcloud.rgsan.ddi import DDILayer, GraphAttention
from pointcloud.rgsan.graph import DependencyGraph, GraphBatch, batch_graphs, graph_from_parse, laplacian_pe
from pointcloud.rgsan.model import RGSAN, RGSANOutputs
from pointcloud.rgsan.postprocess import RGSANPostprocess, RGSANPrediction
from pointcloud.rgsan.rpe import ContextualRPE, reference_rpe, relative_bins
from pointcloud.rgsan.tlm import TextLocalizationModule, TLMOutputs

__all__ = [
    "RGSAN", "ContextualRPE", "DDILayer", "DependencyGraph", "GraphAttention", "GraphBatch", "RGSANCriterion",
    "RGSANOutputs", "RGSANPostprocess", "RGSANPrediction", "TLMOutputs", "TextLocalizationModule", "batch_graphs",
    "graph_from_parse", "laplacian_pe", "mask_to_rle", "reference_rpe", "relative_bins", "rle_to_mask",
    "superpoint_iou",
]
