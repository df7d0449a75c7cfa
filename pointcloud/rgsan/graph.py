"""Dependency graphs of RG-SAN's query nodes (rgsan-mdin spec §4.1, data spec §7.1).

A description of n parsed words becomes a graph of n + 1 nodes ``[ROOT, w1, ..., wn]`` (node k = word k,
1-based, node 0 the artificial ROOT) with one edge per word, **dependent -> governor**, carrying the id of
the word's UD relation in :data:`grounding.text.DEPENDENCY_LABELS` (40 labels + ``<unk>``). Message passing
along these edges lets a governor aggregate its dependents ("chair" hears "brown" and "the").

Node positional encoding: the eigenvectors 1..5 of ``L = I - D^-1/2 A D^-1/2`` with ``A[src, dst] = 1`` per
edge and ``D`` the in-degree clipped to >= 1, from a general (non-symmetric) eigen-solver, sorted by the real
part of the eigenvalue (stable sort, so ties keep LAPACK's order), real parts of the eigenvectors kept,
eigenvector 0 dropped, zero-padded to 5 columns for graphs of fewer than 6 nodes.

Why the PE carries little information on parity settings: a dependency tree directed dependent -> governor
has no cycle, so ``A`` is nilpotent and every eigenvalue of ``L`` equals 1. ``L`` is then defective and the
solver returns (near-)copies of the indicator vectors of nodes without incoming edges (words that govern
nothing). That is the original's behaviour, kept for parity; ``directed=False`` builds the symmetric
Laplacian of the undirected tree instead, whose eigenvectors are the usual spectral coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from grounding.text import label_id

LAP_PE_DIM = 5  # eigenvectors kept per node (spec §4.1: Linear(5 -> 256))


def laplacian_pe(src: Sequence[int], dst: Sequence[int], num_nodes: int, dim: int = LAP_PE_DIM,
                 directed: bool = True) -> np.ndarray:
    """Laplacian eigenvector positional encoding of one graph (data spec §7.1).

    Args:
        src, dst: E edge endpoints (node indices in ``[0, num_nodes)``), edge e goes ``src[e] -> dst[e]``.
        num_nodes: N.
        dim: eigenvectors kept after dropping eigenvector 0.
        directed: ``A[src, dst] = 1`` only (parity); False also sets ``A[dst, src]`` (symmetric Laplacian).

    Returns:
        (N, dim) float32: columns 1..dim of the eigenvectors sorted by eigenvalue, zero columns beyond N - 1.
    """
    adj = np.zeros((num_nodes, num_nodes), dtype=np.float64)
    adj[np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)] = 1.0
    if not directed:
        adj = np.maximum(adj, adj.T)
    in_deg = adj.sum(axis=0).clip(min=1.0)
    norm = in_deg ** -0.5
    lap = np.eye(num_nodes) - norm[:, None] * adj * norm[None, :]
    eigval, eigvec = np.linalg.eig(lap)
    order = np.argsort(eigval.real, kind="stable")
    vectors = np.real(eigvec[:, order])[:, 1:dim + 1]
    out = np.zeros((num_nodes, dim), dtype=np.float32)
    out[:, :vectors.shape[1]] = vectors
    return out


@dataclass(frozen=True)
class DependencyGraph:
    """One description's graph (nodes ``[ROOT, w1..wn]``).

    Attributes:
        num_nodes: n + 1.
        src: (n,) int64 dependent node of each edge (= word index k, 1..n, in word order).
        dst: (n,) int64 governor node (0 = ROOT).
        relation: (n,) int64 relation id (:func:`grounding.text.label_id`).
        lap_pe: (n + 1, 5) float32 Laplacian PE.
        target: node index of the rule-selected (RTS) target word, 1..n.
        root_word: node index of the root word (dependent of the first ROOT edge), 1..n.
    """

    num_nodes: int
    src: Tensor
    dst: Tensor
    relation: Tensor
    lap_pe: Tensor
    target: int
    root_word: int


def graph_from_parse(heads: Sequence[int], labels: Sequence[str], target: int,
                     directed_pe: bool = True) -> DependencyGraph:
    """Build the graph of one parse (:class:`grounding.text.Parse` fields).

    Args:
        heads: n 1-based governors, 0 for the root word (``Parse.heads``).
        labels: n UD labels (``Parse.labels``); unknown labels map to ``<unk>``.
        target: 1-based target word (``Parse.target``); it is also the node index.
        directed_pe: see :func:`laplacian_pe`.

    Raises:
        ValueError: no words, mismatched lengths, a head outside ``[0, n]`` or a target outside ``[1, n]``.
    """
    n = len(heads)
    if n == 0 or len(labels) != n:
        raise ValueError(f"graph_from_parse: need n >= 1 heads and n labels, got {n} heads, {len(labels)} labels")
    if any(h < 0 or h > n for h in heads) or not 1 <= target <= n:
        raise ValueError(f"graph_from_parse: heads must lie in [0, {n}] and target in [1, {n}], "
                         f"got heads={list(heads)}, target={target}")
    src = list(range(1, n + 1))
    dst = [int(h) for h in heads]
    # The word hanging from node 0 is the first sentence's root (later roots hang from it, data spec §7.1).
    root_word = next((k for k, h in enumerate(heads, start=1) if h == 0), 1)
    pe = laplacian_pe(src, dst, n + 1, directed=directed_pe)
    return DependencyGraph(num_nodes=n + 1, src=torch.tensor(src, dtype=torch.long),
                           dst=torch.tensor(dst, dtype=torch.long),
                           relation=torch.tensor([label_id(lab) for lab in labels], dtype=torch.long),
                           lap_pe=torch.from_numpy(pe), target=int(target), root_word=int(root_word))


@dataclass
class GraphBatch:
    """D graphs padded to N = max nodes; edges address the flattened ``(D * N)`` node rows.

    Attributes:
        node_mask: (D, N) bool, True on real nodes (ROOT and words).
        src, dst: (E,) int64 flat node rows ``d * N + k`` of every edge (dependent -> governor).
        relation: (E,) int64 relation ids.
        lap_pe: (D, N, 5) float32, zero on padding.
        target: (D,) int64 node index of the RTS word; root_word: (D,) int64 node index of the root word.
    """

    node_mask: Tensor
    src: Tensor
    dst: Tensor
    relation: Tensor
    lap_pe: Tensor
    target: Tensor
    root_word: Tensor

    @property
    def num_nodes(self) -> int:
        """N, the padded node count."""
        return int(self.node_mask.shape[1])

    def to(self, device: torch.device | str) -> GraphBatch:
        """A copy with every tensor on ``device``."""
        return GraphBatch(*(getattr(self, f).to(device) for f in
                            ("node_mask", "src", "dst", "relation", "lap_pe", "target", "root_word")))


def batch_graphs(graphs: Sequence[DependencyGraph]) -> GraphBatch:
    """Pad and concatenate graphs of different sizes (see :class:`GraphBatch`)."""
    if not graphs:
        raise ValueError("batch_graphs: no graphs")
    d, n = len(graphs), max(g.num_nodes for g in graphs)
    sizes = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
    node_mask = torch.arange(n)[None, :] < sizes[:, None]
    base = [i * n for i in range(d)]
    lap_pe = torch.zeros(d, n, LAP_PE_DIM)
    for i, g in enumerate(graphs):
        lap_pe[i, :g.num_nodes] = g.lap_pe
    return GraphBatch(
        node_mask=node_mask,
        src=torch.cat([g.src + b for g, b in zip(graphs, base)]),
        dst=torch.cat([g.dst + b for g, b in zip(graphs, base)]),
        relation=torch.cat([g.relation for g in graphs]),
        lap_pe=lap_pe,
        target=torch.tensor([g.target for g in graphs], dtype=torch.long),
        root_word=torch.tensor([g.root_word for g in graphs], dtype=torch.long))
