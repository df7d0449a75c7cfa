"""RG-SAN (NeurIPS 2024) for 3D referring expression segmentation (rgsan-mdin spec §1-§4).

``RGSAN(batch) -> RGSANOutputs``: sparse U-Net once per scene -> superpoint mean pooling -> dependency parse and
word features of every description -> Text-driven Localization Module -> 7 predictions (initialisation + 6 layers)
of the output word's superpoint mask, IoU score and position. No loss inside (see :mod:`.criterion`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from datasets.batch3d import ReferBatch3D
from grounding.text import DEPENDENCY_LABELS, DependencyParser, Parse, TextEncoder
from grounding.text.parser import lru_lookup
from pointcloud.checkpoint import LoadReport
from pointcloud.model_groups import load_unet_checkpoint, scaled_param_groups
from pointcloud.rgsan.affinity import AffinityHead
from pointcloud.rgsan.graph import LAP_PE_DIM, DependencyGraph, batch_graphs, graph_from_parse
from pointcloud.rgsan.objects import ObjectContext
from pointcloud.rgsan.scene_objects import check_object_context, scene_objects
from pointcloud.rgsan.tlm import TextLocalizationModule, mlp
from pointcloud.superpoint_pool import (
    SUPERPOINT_GEOMETRY_DIM,
    backbone_superpoints,
    pad_by_offsets,
)

log = logging.getLogger(__name__)


@dataclass
class RGSANOutputs:
    """Raw outputs for D descriptions (L = number of decoder layers, 6; prediction 0 is the initialisation).

    Attributes:
        pred_masks: (L + 1, D, S_max) superpoint mask logits of the output query, over the superpoints of the
            description's scene (columns where ``sp_padding`` is True are padding).
        pred_scores: (L + 1, D) predicted IoU of the binarised mask.
        pred_positions: (L + 1, D, 3) metres, the output word's absolute position (batch ``xyz_middle`` frame).
        sp_padding: (D, S_max) bool, True on padding columns.
        query_index: (D,) int64 node of the output query (1-based word index; node 0 is ROOT).
        word_positions: (D, N, 3) metres, final positions of all nodes (inspection only).
        output_words: D words of the output queries; rules: D names of the target-word rule that fired.
        position_supervised: False when the model runs without position refinement (no position loss).
        sp_semantic_logits: (S_total, C) superpoint class logits of the auxiliary semantic head, superpoints of all
            scenes concatenated in batch order; None without the head (the published model).
        sp_instance_centers: (S_total, 3) metres, each superpoint's predicted instance centre (its centre plus the
            predicted offset); None without ``aux_instance_offsets``.
        sp_edges: (E, 2) int64 adjacent superpoint pairs (global ids, batch order) and sp_edge_logits: (E,) their
            "same object" logits; None without ``aux_affinity`` (:mod:`pointcloud.rgsan.affinity`).
        object_groups: (S_total,) int64 object group of each superpoint in [0, G) (annotated instances in training,
            affinity groups otherwise) and object_logits: (G, C) their class logits; None without
            ``object_context`` (:mod:`pointcloud.rgsan.objects`).
    """

    pred_masks: Tensor
    pred_scores: Tensor
    pred_positions: Tensor
    sp_padding: Tensor
    query_index: Tensor
    word_positions: Tensor
    output_words: list[str]
    rules: list[str]
    position_supervised: bool = True
    sp_semantic_logits: Tensor | None = None
    sp_instance_centers: Tensor | None = None
    sp_edges: Tensor | None = None
    sp_edge_logits: Tensor | None = None
    object_groups: Tensor | None = None
    object_logits: Tensor | None = None


class RGSAN(nn.Module):
    """RG-SAN model.

    Args:
        backbone: the sparse U-Net (:class:`pointcloud.backbone.SparseUNet`), (V, 6) -> (V, C_sp) voxel features.
        text_encoder: the shared :class:`grounding.text.TextEncoder` (frozen in the recipe); its ``.dim`` sets the
            input width of the word projection (384 MiniLM, 768 MPNet).
        d_model, num_heads, ffn_dim, num_layers: 256, 8, 1024, 6.
        attn_mask_threshold: 0.1.
        max_words: parsed words kept per description (78); longer descriptions are cut and re-parsed.
        parser_model: spaCy package of the :class:`grounding.text.DependencyParser` (None: the shipped one).
        position_refinement: False -> positions stay at their cross-attention initialisation (used only for the
            Fourier query encoding), no offset MLP, no RPE, no position loss.
        rule_guided: True -> the output/supervised query is the RTS target word (``Parse.target``); False -> the
            root word of the dependency tree (the "Root" alternative of spec §4.4).
        use_rpe: contextual relative position encoding in the cross-attention.
        directed_laplacian: Laplacian PE of the directed graph (parity) or of the undirected tree.
        backbone_checkpoint: SPFormer/RG-SAN checkpoint whose U-Net keys :meth:`load_pretrained` loads.
        backbone_lr_mult, text_lr_mult: learning-rate multipliers of :meth:`param_groups` (spec §8).
        parse_cache_size: parses (with their graphs) kept in the LRU cache, keyed by the description text.
        aux_semantic_classes: C > 0 adds a linear superpoint classifier on the pooled backbone features, trained by
            the criterion's ``loss_semantic`` against the superpoints' majority ScanNet-20 label. Not part of the
            published model (0): it stands in for the semantic supervision that the published backbone received
            in SPFormer pretraining, for backbones trained from scratch (configs/experiment/rgsan_synthetic.yaml).
        superpoint_geometry: append :func:`pointcloud.superpoint_pool.superpoint_geometry` (mean colour, height,
            extent; 8 values) to each pooled superpoint feature before the decoder. Not published (False); it gives
            a backbone trained from scratch the colour and size cues at once.
        mask_position_prior: a Gaussian prior around the output word's position added to the mask logits
            (:class:`~pointcloud.rgsan.tlm.TextLocalizationModule`). Not published (False).
        aux_instance_offsets: an MLP on the decoder's superpoint input predicts each superpoint's offset to the
            centre of its instance (``loss_offset``); ``RGSANPostprocess(snap_to_instances=True)`` groups superpoints
            by these centres and answers with whole groups (:mod:`pointcloud.rgsan.instances`). Not published.
        aux_affinity: score every pair of adjacent superpoints (points within ``affinity_cell`` metres' grid
            cells) "same object?" (``loss_affinity``); ``RGSANPostprocess(snap_to_instances=True)`` then groups
            superpoints by average linkage of these scores (:mod:`pointcloud.rgsan.affinity`). Not published;
            takes precedence over the offsets for snapping when both are on.
        object_context: group superpoints into objects (annotated instances in training, affinity groups
            otherwise), classify each group from its mean feature and hand-made geometry (``loss_object_class``)
            and append its class probabilities and geometry to each superpoint's decoder input
            (:mod:`pointcloud.rgsan.objects`). Needs ``aux_affinity`` and ``aux_semantic_classes``. Not published.
        random_pe_signs: flip the Laplacian eigenvector signs at random in training (True, spec D8 without the
            flips at evaluation). The flips come from the global torch generator, so False is what makes training
            a pure function of the data order (e.g. to compare a data-parallel run with gradient accumulation).
    """

    def __init__(self, backbone: nn.Module, text_encoder: TextEncoder, d_model: int = 256, num_heads: int = 8,
                 ffn_dim: int = 1024, num_layers: int = 6, attn_mask_threshold: float = 0.1, max_words: int = 78,
                 parser_model: str | None = None, position_refinement: bool = True, rule_guided: bool = True,
                 use_rpe: bool = True, directed_laplacian: bool = True, backbone_checkpoint: str | None = None,
                 backbone_lr_mult: float = 0.01, text_lr_mult: float = 0.001, parse_cache_size: int = 200_000,
                 aux_semantic_classes: int = 0, superpoint_geometry: bool = False,
                 mask_position_prior: bool = False, aux_instance_offsets: bool = False, aux_affinity: bool = False,
                 affinity_cell: float = 0.05, object_context: bool = False,
                 random_pe_signs: bool = True) -> None:
        super().__init__()
        check_object_context("RGSAN", object_context, aux_affinity, aux_semantic_classes)
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.text_proj = nn.Linear(text_encoder.dim, d_model)
        sp_channels = int(getattr(backbone, "out_channels", 32))
        self.object_context = ObjectContext(sp_channels, aux_semantic_classes) if object_context else None
        in_channels = (sp_channels + (SUPERPOINT_GEOMETRY_DIM if superpoint_geometry else 0)  # decoder's input
                       + (self.object_context.out_channels if self.object_context is not None else 0))
        self.tlm = TextLocalizationModule(
            sp_channels=in_channels, dim=d_model, num_heads=num_heads,
            ffn_dim=ffn_dim, num_layers=num_layers, num_relations=len(DEPENDENCY_LABELS), lap_dim=LAP_PE_DIM,
            attn_mask_threshold=attn_mask_threshold, position_refinement=position_refinement, use_rpe=use_rpe,
            mask_position_prior=mask_position_prior)
        self.offset_head = mlp([in_channels, 64, 64, 3]) if aux_instance_offsets else None
        self.semantic_head = nn.Linear(sp_channels, aux_semantic_classes) if aux_semantic_classes > 0 else None
        self.affinity_head = AffinityHead(sp_channels) if aux_affinity else None
        self.affinity_cell = affinity_cell
        self.superpoint_geometry = superpoint_geometry
        self.parser = DependencyParser(model=parser_model, max_words=max_words)
        self.position_refinement = position_refinement
        self.rule_guided = rule_guided
        self.directed_laplacian = directed_laplacian
        self.random_pe_signs = random_pe_signs
        self.backbone_checkpoint = backbone_checkpoint
        self.backbone_lr_mult, self.text_lr_mult = backbone_lr_mult, text_lr_mult
        self.parse_cache_size = parse_cache_size
        self._parses: OrderedDict[str, tuple[Parse, DependencyGraph]] = OrderedDict()
        self._warned_truncation = False

    # ------------------------------------------------------------------ setup helpers
    def load_pretrained(self, strict: bool = True) -> LoadReport | None:
        """Load the U-Net part of ``backbone_checkpoint`` into the backbone (never called by ``__init__``).

        Keys outside ``input_conv.`` / ``unet.`` / ``output_layer.`` are ignored by the prefix map; with ``strict``
        any missing, unexpected or mis-shaped U-Net key raises before anything is loaded. Returns the report
        (None without a checkpoint) and logs its summary.
        """
        return load_unet_checkpoint(self.backbone, self.backbone_checkpoint, strict, "RG-SAN")

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups with the per-module learning-rate scales of spec §8.

        The engine's contract (``GroundingTask``): each group has ``params``, ``lr_scale`` (multiplied into the
        configured base lr) and a ``name`` for the learning-rate monitor. Backbone ×``backbone_lr_mult`` (0.01),
        text encoder ×``text_lr_mult`` (0.001; absent when frozen), everything else ×1. Only parameters with
        ``requires_grad``; empty groups are omitted.
        """
        return scaled_param_groups(self, self.backbone_lr_mult, self.text_lr_mult)

    @property
    def rule_counts(self) -> dict[str, int]:
        """How often each target-word rule fired over the distinct descriptions parsed so far."""
        return dict(self.parser.rule_counts)

    def parse(self, texts: Sequence[str]) -> list[tuple[Parse, DependencyGraph]]:
        """Parse (through the LRU cache) and build the graph of every text; misses are parsed in one spaCy pipe."""
        before = len(self._parses)

        def parse_new(misses: list[str]) -> list[tuple[Parse, DependencyGraph]]:
            return [(p, graph_from_parse(p.heads, p.labels, p.target, self.directed_laplacian))
                    for p in self.parser.parse_many(misses)]

        out = lru_lookup(self._parses, texts, parse_new, self.parse_cache_size)
        if len(self._parses) // 5000 != before // 5000:
            log.info("RG-SAN target-word rules over %d descriptions: %s", len(self._parses), self.rule_counts)
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, batch: ReferBatch3D) -> RGSANOutputs:
        """Run the model on a batch of B scenes and D descriptions (see :class:`RGSANOutputs`)."""
        if batch.superpoint is None or batch.sp_offsets is None or batch.sp_center is None:
            raise ValueError(f"RG-SAN needs superpoints, but the batch of scenes {batch.scene_ids} has none")
        device = batch.voxel_feats.device
        # Scene side: once per scene, never repeated per description.
        sp = backbone_superpoints(self.backbone, batch)
        objects = scene_objects(sp, batch, semantic_head=self.semantic_head, affinity_head=self.affinity_head,
                                object_context=self.object_context, affinity_cell=self.affinity_cell,
                                need_geometry=self.superpoint_geometry, training=self.training)
        sp_in = objects.decoder_input(sp, self.superpoint_geometry)
        sp_feats, valid = pad_by_offsets(sp_in, batch.sp_offsets)
        sp_centers, _ = pad_by_offsets(batch.sp_center.to(sp.dtype), batch.sp_offsets)
        sp_pad = ~valid

        # Text side.
        parsed = self.parse(batch.texts)
        parses = [p for p, _ in parsed]
        graphs = batch_graphs([g for _, g in parsed]).to(device)
        text = self.text_encoder([p.words for p in parses])
        words = self.text_proj(text.words.to(device))  # (D, N - 1, d): one vector per parsed word
        if not self._warned_truncation:
            cut = int((graphs.node_mask[:, 1:] & ~text.word_mask.to(device)).sum())
            if cut:  # words past the encoder's token budget have no feature (their node keeps only its PE)
                log.warning("RG-SAN: %d parsed words got no text feature (text_encoder.max_length=%d tokens is too "
                            "short for these descriptions; raise it)", cut, self.text_encoder.max_length)
                self._warned_truncation = True
        if words.shape[1] != graphs.num_nodes - 1:
            raise RuntimeError(f"text encoder returned {words.shape[1]} words per row, the parses have "
                               f"{graphs.num_nodes - 1}")
        lap_pe = graphs.lap_pe
        if self.training and self.random_pe_signs:
            # Eigenvector signs are arbitrary: flip them at random, per description and eigenvector, in
            # training only (spec D8: the original also flips at evaluation, making inference random).
            sign = torch.randint(0, 2, (lap_pe.shape[0], 1, lap_pe.shape[2]), device=device) * 2 - 1
            lap_pe = lap_pe * sign
        select = graphs.target if self.rule_guided else graphs.root_word
        out = self.tlm(words, graphs.node_mask, lap_pe, graphs.relation, graphs.src, graphs.dst, select,
                       sp_feats, sp_centers, sp_pad, batch.desc_scene.to(device))
        index = select.tolist()
        return RGSANOutputs(
            pred_masks=out.masks, pred_scores=out.scores, pred_positions=out.positions,
            sp_padding=sp_pad[batch.desc_scene.to(device)], query_index=select, word_positions=out.word_positions,
            output_words=[p.words[k - 1] for p, k in zip(parses, index)],
            rules=[p.rule if self.rule_guided else "root_word" for p in parses],
            position_supervised=self.position_refinement,
            sp_semantic_logits=objects.semantic_logits,
            sp_instance_centers=(batch.sp_center.to(sp.dtype) + self.offset_head(sp_in)
                                 if self.offset_head is not None else None),
            sp_edges=objects.edges, sp_edge_logits=objects.edge_logits, object_groups=objects.groups,
            object_logits=objects.object_logits)
