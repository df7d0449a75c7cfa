"""MDIN (ACM MM 2024) for generalized 3D referring segmentation: zero, one or many targets (rgsan-mdin spec §6).

``MDIN(batch) -> MDINOutputs``: sparse U-Net once per scene -> superpoint mean pooling -> ``inst_feats`` ->
farthest-point seeds (256) -> text-driven sampler (:class:`grounding.compress.TextGuidedTopK` with MDIN's
softmax-sum score) keeps 128 seeds per description -> query MLP -> decoder (6 layers) -> heads at every depth
(7 predictions: the initial queries and each layer). No loss inside (:mod:`.criterion`), no thresholding
(:mod:`.postprocess`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from datasets.batch3d import ReferBatch3D
from grounding.compress import CompressContext, TextGuidedTopK
from grounding.text import DependencyParser, Parse, TextEncoder
from grounding.text.parser import lru_lookup
from grounding.tokens import TokenSet, batched_gather
from pointcloud.checkpoint import LoadReport
from pointcloud.mdin.decoder import MDINDecoderLayer, MDINHeads, attention_mask_from_logits
from pointcloud.mdin.fps import batched_fps
from pointcloud.mdin.phrases import NO_OBJECT_SUFFIX, SETS, phrase_sets
from pointcloud.mdin.spatial import PairEmbedding
from pointcloud.model_groups import load_unet_checkpoint, scaled_param_groups
from pointcloud.rgsan.affinity import AffinityHead
from pointcloud.rgsan.objects import ObjectContext
from pointcloud.rgsan.scene_objects import check_object_context, scene_objects
from pointcloud.rgsan.tlm import mlp
from pointcloud.superpoint_pool import (
    SUPERPOINT_GEOMETRY_DIM,
    backbone_superpoints,
    pad_by_offsets,
    superpoint_pool,
)

TASK_TYPES = ("gres", "res")


@dataclass
class MDINOutputs:
    """Raw outputs for D descriptions, Q queries each (L = decoder layers; prediction 0 = the initial queries).

    Attributes:
        pred_masks: (L + 1, D, Q, S_max) superpoint mask logits over the description's scene.
        pred_scores: (L + 1, D, Q) predicted IoU.
        pred_indicator: (L + 1, D, Q, 2) target / non-target logits (class 1 = target).
        query_proj: (L + 1, D, Q, P) unit contrastive projections of the queries.
        token_proj: (D, T, P) unit contrastive projections of the final words.
        word_valid: (D, T) bool, real words (the appended " . not mentioned" included).
        word_sets: name -> (D, T) bool positive word sets: ``main``, ``modifier``, ``pronoun``, ``relation``,
            ``other`` (spec §6.7) and ``no_object`` (the words "not" and "mentioned").
        sp_padding: (D, S_max) bool, True on padding superpoints.
        query_valid: (D, Q) bool, False on padding queries (scenes with fewer seeds than Q).
        query_sp: (D, Q) int64 scene-local superpoint index of each query's seed.
        seed_sp: (D, K) int64 scene-local superpoint index of every seed; seed_valid: (D, K) bool.
        seed_scores: (D, K) softmax-sum relevance (the ranking), seed_logits: (D, K) its logit (max over words of
            the scaled dot product) for the sampler loss.
        sp_semantic_logits, sp_edges, sp_edge_logits, object_groups, object_logits: the scene-object heads'
            outputs (:class:`pointcloud.rgsan.scene_objects.SceneObjects`), None when the heads are off.
        text_class_logits: (D, C) class of the referred object(s) read from the main words (``class_match``).
        query_class_match: (D, Q) probability that the object of each query's seed is of that class
            (``class_match``); its log-odds, scaled, are already added to ``pred_indicator[..., 1]``.
        target_plural: (D,) bool, the description's target word is grammatically plural (from the parse; read
            by ``MDINPostprocess``'s ``plural_min_objects`` and ``singular_max_objects``).
    """

    pred_masks: Tensor
    pred_scores: Tensor
    pred_indicator: Tensor
    query_proj: Tensor
    token_proj: Tensor
    word_valid: Tensor
    word_sets: dict[str, Tensor]
    sp_padding: Tensor
    query_valid: Tensor
    query_sp: Tensor
    seed_sp: Tensor
    seed_valid: Tensor
    seed_scores: Tensor
    seed_logits: Tensor
    sp_semantic_logits: Tensor | None = None
    sp_edges: Tensor | None = None
    sp_edge_logits: Tensor | None = None
    object_groups: Tensor | None = None
    object_logits: Tensor | None = None
    text_class_logits: Tensor | None = None
    query_class_match: Tensor | None = None
    target_plural: Tensor | None = None


class MDIN(nn.Module):
    """MDIN model.

    Args:
        backbone: the sparse U-Net (:class:`pointcloud.backbone.SparseUNet`), (V, 6) -> (V, C_sp).
        text_encoder: the shared :class:`grounding.text.TextEncoder` (RoBERTa-base in the recipe, frozen).
        d_model, num_heads, ffn_dim, num_layers: 256, 8, 1024, 6.
        num_seeds: farthest-point seeds per scene (256); num_queries: seeds kept per description (128).
        attn_mask_threshold: superpoints with sigmoid(previous mask logit) below it are masked (0.5).
        proj_dim: contrastive projection width (64).
        task_type: ``"gres"`` (Multi3DRes) or ``"res"`` (ScanRefer); read by the postprocess.
        parser_model: spaCy package for the :class:`~grounding.text.DependencyParser` (None: the shipped one).
        max_words: parsed words kept per description (longer texts are cut and re-parsed).
        superpoint_geometry: append hand-made superpoint descriptors (mean colour, heights, extent) to the pooled
            features. Not published (False); for backbones trained from scratch.
        parity_residual_only, parity_triple_residual: reproduce defects D3 / D4 (:mod:`.decoder`).
        backbone_checkpoint: SPFormer checkpoint whose U-Net keys :meth:`load_pretrained` loads.
        backbone_lr_mult, text_lr_mult: learning-rate scales of :meth:`param_groups` (0.01, 0.001).
        fps_start: index of the first FPS seed (0).
        aux_semantic_classes, aux_affinity, affinity_cell, object_context: the scene-object heads of
            :mod:`pointcloud.rgsan.scene_objects` (superpoint semantics, superpoint affinity, object classification with
            its class probabilities and geometry appended to each superpoint's features before ``inst_feats``).
            Not published (0 / False): they stand in for the SPFormer-pretrained U-Net when it is trained from
            scratch. ``MDINPostprocess(object_answers=True)`` needs ``aux_affinity``.
        class_match: (needs ``object_context``; not published) a linear head reads the referred class from the
            main words (mean of their features, ``loss_text_class``), each query's seed object has class
            probabilities from the object context, and the log-odds of their agreement
            ``m = sum_c p_text(c) p_object(c)`` times a learned scale (initially 1) is added to the target logit of
            every prediction. It gives the indicator the class cue that the class-name baseline lives on, as an
            explicit product, instead of leaving it to be found through attention in a few hundred steps.
        relative_positions: (not published) QQA also reads the pairwise offsets between the queries' objects
            (:mod:`pointcloud.mdin.spatial`): each query sits at the centre of its seed's object group when the
            model has ``object_context`` (the annotated instance in training, the affinity group otherwise), else
            at its seed superpoint's centre. The published queries carry no position.
        pair_dim: width of the pair embedding of ``relative_positions``.
        relative_keys: with ``relative_positions``, the offsets also enter the attention keys, so what a query
            attends to depends on its content and the offset together
            (:class:`~pointcloud.mdin.spatial.SpatialQueryAttention`).
    """

    def __init__(self, backbone: nn.Module, text_encoder: TextEncoder, d_model: int = 256, num_heads: int = 8,
                 ffn_dim: int = 1024, num_layers: int = 6, num_seeds: int = 256, num_queries: int = 128,
                 attn_mask_threshold: float = 0.5, proj_dim: int = 64, task_type: str = "gres",
                 parser_model: str | None = None, max_words: int = 78, superpoint_geometry: bool = False,
                 parity_residual_only: bool = False, parity_triple_residual: bool = False,
                 backbone_checkpoint: str | None = None, backbone_lr_mult: float = 0.01,
                 text_lr_mult: float = 0.001, fps_start: int = 0, parse_cache_size: int = 200_000,
                 aux_semantic_classes: int = 0, aux_affinity: bool = False, affinity_cell: float = 0.05,
                 object_context: bool = False, class_match: bool = False, relative_positions: bool = False,
                 pair_dim: int = 32, relative_keys: bool = False) -> None:
        super().__init__()
        if class_match and not object_context:
            raise ValueError("MDIN(class_match=True) compares the text's class with each seed object's class from "
                             "the object context: it needs object_context=True")
        check_object_context("MDIN", object_context, aux_affinity, aux_semantic_classes)
        if task_type not in TASK_TYPES:
            raise ValueError(f"MDIN.task_type must be one of {TASK_TYPES}, got {task_type!r}")
        if num_queries > num_seeds:
            raise ValueError(f"MDIN: num_queries ({num_queries}) cannot exceed num_seeds ({num_seeds})")
        self.backbone = backbone
        self.text_encoder = text_encoder
        unet_channels = int(getattr(backbone, "out_channels", 32))
        self.semantic_head = nn.Linear(unet_channels, aux_semantic_classes) if aux_semantic_classes > 0 else None
        self.affinity_head = AffinityHead(unet_channels) if aux_affinity else None
        self.object_context = ObjectContext(unet_channels, aux_semantic_classes) if object_context else None
        self.affinity_cell = affinity_cell
        self.text_class_head = nn.Linear(d_model, aux_semantic_classes) if class_match else None
        self.class_match_scale = nn.Parameter(torch.ones(())) if class_match else None
        sp_channels = (unet_channels + (SUPERPOINT_GEOMETRY_DIM if superpoint_geometry else 0)
                       + (self.object_context.out_channels if self.object_context is not None else 0))
        self.inst_proj = nn.Sequential(nn.Linear(sp_channels, d_model), nn.LayerNorm(d_model), nn.ReLU())
        self.text_proj = nn.Sequential(nn.Linear(text_encoder.dim, d_model), nn.LayerNorm(d_model))
        self.sampler = TextGuidedTopK(k=num_queries, mode="gather", score_fn="softmax_sum", text_dim=d_model,
                                      token_dim=d_model, score_dim=d_model, straight_through=False)
        self.query_generator = mlp([d_model, d_model, d_model, d_model])
        self.pair_embedding = PairEmbedding(pair_dim) if relative_positions else None
        self.layers = nn.ModuleList(MDINDecoderLayer(d_model, num_heads, ffn_dim, parity_residual_only,
                                                     parity_triple_residual, pair_dim if relative_positions else 0,
                                                     relative_keys)
                                    for _ in range(num_layers))
        self.heads = MDINHeads(d_model, proj_dim)
        self.token_proj = mlp([d_model, d_model, d_model, proj_dim])
        self.parser = DependencyParser(model=parser_model, max_words=max_words)
        self.num_seeds, self.num_queries = num_seeds, num_queries
        self.attn_mask_threshold = attn_mask_threshold
        self.task_type = task_type
        self.superpoint_geometry = superpoint_geometry
        self.backbone_checkpoint = backbone_checkpoint
        self.backbone_lr_mult, self.text_lr_mult = backbone_lr_mult, text_lr_mult
        self.fps_start = fps_start
        self.parse_cache_size = parse_cache_size
        self._parses: OrderedDict[str, Parse] = OrderedDict()

    # ------------------------------------------------------------------ setup helpers
    def load_pretrained(self, strict: bool = True) -> LoadReport | None:
        """Load the U-Net part of ``backbone_checkpoint`` (never called by ``__init__``); see RG-SAN's."""
        return load_unet_checkpoint(self.backbone, self.backbone_checkpoint, strict, "MDIN")

    def param_groups(self) -> list[dict]:
        """Optimizer groups with the lr scales of spec §8: backbone x0.01, text encoder x0.001, the rest x1."""
        return scaled_param_groups(self, self.backbone_lr_mult, self.text_lr_mult)

    def parse(self, texts: Sequence[str]) -> list[Parse]:
        """Dependency parses through an LRU cache keyed by the text (spec D22: the text itself is the key)."""
        return lru_lookup(self._parses, texts, self.parser.parse_many, self.parse_cache_size)

    # ------------------------------------------------------------------ pieces of the forward pass
    def _text(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
        """Words (D, T, d), valid (D, T), the positive word sets of spec §6.7 (D, T) bool each, and (D,) bool
        grammatically plural targets."""
        parses = self.parse(texts)
        words_in = [list(p.words) + list(NO_OBJECT_SUFFIX) for p in parses]
        feats = self.text_encoder(words_in)
        words = self.text_proj(feats.words.to(device))
        valid = feats.word_mask.to(device)
        d, t = valid.shape
        sets = {name: torch.zeros(d, t, dtype=torch.bool) for name in (*SETS, "no_object")}
        for i, p in enumerate(parses):
            ps = phrase_sets(p)
            for name in SETS:
                idx = list(getattr(ps, name))
                if idx:
                    sets[name][i, idx] = True
            n = len(p.words)
            sets["no_object"][i, [n + 1, n + 2]] = True  # "not", "mentioned" after the "."
        plural = torch.tensor([p.target_plural for p in parses], dtype=torch.bool, device=device)
        return words, valid, {k: v.to(device) & valid for k, v in sets.items()}, plural

    def _class_match(self, words: Tensor, main: Tensor, valid: Tensor, context: Tensor, sp_offsets: Tensor,
                     scene: Tensor, query_sp: Tensor) -> tuple[Tensor, Tensor]:
        """Text class logits (D, C) and the class agreement (D, Q) of each query's seed object (``class_match``).

        Args:
            words: (D, T, d) projected word features; main: (D, T) bool main words (all valid words where a
                description has none); valid: (D, T); context: (S, C + 9) object context (class probabilities
                first); sp_offsets: (B + 1,); scene: (D,) scene of each description; query_sp: (D, Q) local seeds.
        """
        use = torch.where(main.any(1, keepdim=True), main, valid).to(words.dtype)  # (D, T)
        pooled = (words * use[..., None]).sum(1) / use.sum(1, keepdim=True).clamp_min(1.0)
        text_class = self.text_class_head(pooled)  # (D, C)
        num_classes = text_class.shape[1]
        obj_class, _ = pad_by_offsets(context[:, :num_classes], sp_offsets)  # (B, S, C)
        seed_class = batched_gather(obj_class[scene], query_sp)  # (D, Q, C)
        match = (seed_class * text_class.softmax(-1)[:, None, :]).sum(-1)
        return text_class, match

    @staticmethod
    def _query_positions(batch: ReferBatch3D, groups: Tensor | None, centres: Tensor, scene: Tensor,
                         query_sp: Tensor) -> Tensor:
        """(D, Q, 3) metres: the point-weighted centre of each query's seed object (``groups``: (S,) batch-wide
        group per superpoint), or the seed superpoint's centre without groups (``centres``: (B, S, 3) padded)."""
        if groups is not None:  # the mean of the object's points (superpoint_pool's scatter mean, per group)
            point_group = groups[batch.superpoint.to(groups.device)]
            num_groups = int(groups.max()) + 1 if groups.numel() else 0
            coord = batch.coord.to(centres.device, centres.dtype)
            object_centre = superpoint_pool(coord, point_group, num_groups, validate=False)[groups]  # (S, 3)
            centres, _ = pad_by_offsets(object_centre, batch.sp_offsets)
        return batched_gather(centres[scene], query_sp)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: ReferBatch3D) -> MDINOutputs:
        """Run the model on B scenes and D descriptions (see :class:`MDINOutputs`)."""
        if batch.superpoint is None or batch.sp_offsets is None or batch.sp_center is None:
            raise ValueError(f"MDIN needs superpoints, but the batch of scenes {batch.scene_ids} has none")
        device = batch.voxel_feats.device
        sp = backbone_superpoints(self.backbone, batch)
        objects = scene_objects(sp, batch, semantic_head=self.semantic_head, affinity_head=self.affinity_head,
                                object_context=self.object_context, affinity_cell=self.affinity_cell,
                                need_geometry=self.superpoint_geometry, training=self.training)
        sp_in = objects.decoder_input(sp, self.superpoint_geometry)
        inst, sp_valid = pad_by_offsets(self.inst_proj(sp_in), batch.sp_offsets)  # (B, S, d)
        centres, _ = pad_by_offsets(batch.sp_center.to(device, sp.dtype), batch.sp_offsets)  # (B, S, 3) metres
        scene = batch.desc_scene.to(device)
        sp_pad = ~sp_valid[scene]  # (D, S)

        # Seeds: farthest points on the superpoint centres, once per scene.
        seeds, seed_valid_b = batched_fps(batch.sp_center.to(device), batch.sp_offsets.to(device), self.num_seeds,
                                          self.fps_start)
        seed_feats = batched_gather(inst, seeds)[scene]  # (D, K, d)
        seed_sp, seed_valid = seeds[scene], seed_valid_b[scene]

        words, word_valid, word_sets, target_plural = self._text(batch.texts, device)
        main_words = words  # before the decoder's language updates

        # Text-driven sampler: the shared text-guided compressor with MDIN's softmax-sum score.
        k = seed_feats.shape[1]
        tokens = TokenSet(x=seed_feats, valid=seed_valid, pos=batched_gather(centres[scene], seed_sp),
                          size=seed_valid.float(), src_index=torch.where(
                              seed_valid, torch.arange(k, device=device).expand_as(seed_sp), -1))
        seed_scores, seed_logits = self.sampler.score_terms(tokens, words, word_valid)
        plan = self.sampler.plan_from_scores(tokens, seed_scores.detach(), CompressContext(mode="gather"))
        kept = self.sampler.apply(plan, tokens)
        query_valid = kept.valid
        query_sp = torch.where(query_valid, batched_gather(seed_sp, plan.rep_index), 0)
        queries = self.query_generator(kept.x)

        pair = None
        if self.pair_embedding is not None:
            pair = self.pair_embedding(self._query_positions(batch, objects.groups, centres, scene, query_sp))
        word_pad = ~word_valid
        mask_keys = self.heads.mask_features(inst)[scene]  # (D, S, d)
        inst_d = inst[scene]
        preds = [self.heads(queries, mask_keys)]
        for layer in self.layers:
            attn = attention_mask_from_logits(preds[-1]["masks"], sp_pad, self.attn_mask_threshold)
            queries, words = layer(queries, words, word_pad, inst_d, sp_pad, attn, pair, ~query_valid)
            preds.append(self.heads(queries, mask_keys))
        masks = torch.stack([p["masks"] for p in preds]).masked_fill(sp_pad[None, :, None, :], -1e4)
        indicator = torch.stack([p["indicator"] for p in preds])
        text_class = match = None
        if self.text_class_head is not None:
            text_class, match = self._class_match(main_words, word_sets["main"], word_valid, objects.context,
                                                  batch.sp_offsets, scene, query_sp)
            log_odds = torch.logit(match.clamp(1e-4, 1 - 1e-4)) * self.class_match_scale
            indicator = torch.stack([indicator[..., 0], indicator[..., 1] + log_odds[None]], -1)
        return MDINOutputs(
            pred_masks=masks, pred_scores=torch.stack([p["scores"] for p in preds]),
            pred_indicator=indicator,
            query_proj=torch.stack([p["proj"] for p in preds]),
            token_proj=nn.functional.normalize(self.token_proj(words), dim=-1), word_valid=word_valid,
            word_sets=word_sets, sp_padding=sp_pad, query_valid=query_valid, query_sp=query_sp, seed_sp=seed_sp,
            seed_valid=seed_valid, seed_scores=seed_scores, seed_logits=seed_logits,
            sp_semantic_logits=objects.semantic_logits, sp_edges=objects.edges, sp_edge_logits=objects.edge_logits,
            object_groups=objects.groups, object_logits=objects.object_logits, text_class_logits=text_class,
            query_class_match=match, target_plural=target_plural)
