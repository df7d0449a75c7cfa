"""RG-SAN dependency graphs: edges, relation ids, Laplacian PE and batching (rgsan-mdin §4.1, data spec §7.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grounding.text import DEPENDENCY_LABELS, DependencyParser, label_id
from pointcloud.rgsan.graph import LAP_PE_DIM, batch_graphs, graph_from_parse, laplacian_pe


def test_hand_sentence_edges_and_relations() -> None:
    # "the red chair is next to the table": a hand parse (UD shape, chair is the subject of "is").
    words = ["the", "red", "chair", "is", "next", "to", "the", "table"]
    heads = [3, 3, 4, 0, 4, 8, 8, 5]
    labels = ["det", "amod", "nsubj", "ROOT", "advmod", "case", "det", "obl"]
    g = graph_from_parse(heads, labels, target=3)
    assert g.num_nodes == len(words) + 1
    assert g.src.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]  # dependent -> governor, one edge per word
    assert g.dst.tolist() == heads
    assert g.relation.tolist() == [20, 5, 29, 0, 4, 9, 20, 33]
    assert g.relation.tolist() == [DEPENDENCY_LABELS.index(lab) for lab in labels]
    assert (g.target, g.root_word) == (3, 4)
    assert g.lap_pe.shape == (9, LAP_PE_DIM) and g.lap_pe.dtype == torch.float32


def test_unknown_label_goes_to_unk_bucket() -> None:
    g = graph_from_parse([0, 1], ["ROOT", "flat"], target=1)
    assert g.relation.tolist() == [0, len(DEPENDENCY_LABELS) - 1]
    assert label_id("flat") == 40


def test_directed_pe_of_three_node_graph_by_hand() -> None:
    # Nodes [ROOT, red, chair]; edges red -> chair, chair -> ROOT. A[1, 2] = A[2, 0] = 1, in-degrees (1, 0, 1)
    # clipped to 1, so L = I - A. A is nilpotent: every eigenvalue of L is 1 and its only eigenvector direction
    # is the null space of A, i.e. x_0 = x_2 = 0: e_1 (the node nobody depends on). Both kept columns are +-e_1.
    pe = laplacian_pe([1, 2], [2, 0], 3)
    assert pe.shape == (3, 5)
    np.testing.assert_allclose(np.abs(pe[:, :2]), [[0, 0], [1, 1], [0, 0]], atol=1e-6)
    assert (pe[:, 2:] == 0).all()  # 3 nodes -> 2 eigenvectors after dropping the first; zero-padded to 5


def test_undirected_pe_of_three_node_path_by_hand() -> None:
    # Undirected path 0 - 2 - 1, degrees (1, 1, 2). Normalised Laplacian eigenpairs: 0 with (1, 1, sqrt 2) / 2,
    # 1 with (1, -1, 0) / sqrt 2, 2 with (1, 1, -sqrt 2) / 2. Dropping eigenvector 0 keeps the last two.
    pe = laplacian_pe([1, 2], [2, 0], 3, directed=False)
    v1 = np.array([1, -1, 0]) / math.sqrt(2)
    v2 = np.array([1, 1, -math.sqrt(2)]) / 2
    assert abs(abs(pe[:, 0] @ v1) - 1) < 1e-6  # equal up to the arbitrary sign
    assert abs(abs(pe[:, 1] @ v2) - 1) < 1e-6
    assert (pe[:, 2:] == 0).all()


def test_pe_columns_are_eigenvectors_and_fill_five_columns() -> None:
    heads = [2, 0, 2, 5, 3, 5, 2]  # 8 nodes: 7 eigenvectors beyond the first, 5 kept
    src, dst = list(range(1, 8)), heads
    pe = laplacian_pe(src, dst, 8)
    adj = np.zeros((8, 8))
    adj[src, dst] = 1
    norm = adj.sum(0).clip(min=1) ** -0.5
    lap = np.eye(8) - norm[:, None] * adj * norm[None, :]
    assert pe.shape == (8, 5)
    for col in pe.T:
        assert np.linalg.norm(col) > 0.5  # a real eigenvector, not padding
        np.testing.assert_allclose(lap @ col, col, atol=1e-5)  # eigenvalue 1 (directed tree)


def test_real_parse_multi_sentence() -> None:
    parse = DependencyParser(max_words=78).parse("this is a brown chair. it is next to the table.")
    g = graph_from_parse(parse.heads, parse.labels, parse.target)
    roots = [k for k, lab in enumerate(parse.labels, 1) if lab == "ROOT"]
    assert len(roots) == 2  # one per sentence; the second hangs from the first root word
    assert g.dst[roots[0] - 1] == 0 and g.dst[roots[1] - 1] == roots[0] == g.root_word
    assert g.relation.tolist() == parse.label_ids()
    assert parse.words[g.target - 1] == "chair"


def test_batching_graphs_of_different_lengths() -> None:
    a = graph_from_parse([2, 0], ["amod", "ROOT"], target=2)  # 3 nodes
    b = graph_from_parse([2, 0, 2, 3], ["det", "ROOT", "amod", "punct"], target=2)  # 5 nodes
    gb = batch_graphs([a, b])
    assert gb.num_nodes == 5
    assert gb.node_mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert gb.src.tolist() == [1, 2, 6, 7, 8, 9]  # description 1's rows start at 1 * N = 5
    assert gb.dst.tolist() == [2, 0, 7, 5, 7, 8]
    assert gb.relation.tolist() == a.relation.tolist() + b.relation.tolist()
    torch.testing.assert_close(gb.lap_pe[0, :3], a.lap_pe)
    assert (gb.lap_pe[0, 3:] == 0).all()
    torch.testing.assert_close(gb.lap_pe[1], b.lap_pe)
    assert gb.target.tolist() == [2, 2] and gb.root_word.tolist() == [2, 2]


@pytest.mark.parametrize(("heads", "labels", "target"),
                         [([], [], 1), ([0, 5], ["ROOT", "det"], 1), ([0], ["ROOT"], 2), ([0], [], 1)])
def test_bad_parses_raise(heads: list[int], labels: list[str], target: int) -> None:
    with pytest.raises(ValueError, match="graph_from_parse"):
        graph_from_parse(heads, labels, target)
