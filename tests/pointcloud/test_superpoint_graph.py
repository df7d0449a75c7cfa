"""Superpoint adjacency, shape and average-linkage grouping (pointcloud/superpoint_graph.py), by hand and
against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pointcloud.superpoint_graph import average_linkage, superpoint_edges, superpoint_shape


def test_edges_by_hand() -> None:
    # Cell 0.05 m. Scene 0: superpoint 0 at x = 0 and 0.04 (cell 0), superpoint 1 at x = 0.09 (cell 1: touches),
    # superpoint 2 at x = 0.5 (far). Scene 1: superpoint 3 at x = 0 shares coordinates with superpoint 0 but
    # lies in another scene.
    coord = torch.tensor([[0.0, 0, 0], [0.04, 0, 0], [0.09, 0, 0], [0.5, 0, 0], [0.0, 0, 0]])
    superpoint = torch.tensor([0, 0, 1, 2, 3])
    point_scene = torch.tensor([0, 0, 0, 0, 1])
    edges, contact = superpoint_edges(coord, superpoint, point_scene, 0.05)
    assert edges.tolist() == [[0, 1]]
    assert contact.tolist() == [1]
    # Two superpoints sharing one cell are adjacent.
    edges, contact = superpoint_edges(torch.tensor([[0.01, 0, 0], [0.02, 0, 0]]), torch.tensor([0, 1]),
                                      torch.tensor([0, 0]), 0.05)
    assert edges.tolist() == [[0, 1]] and contact.tolist() == [1]
    with pytest.raises(ValueError, match="cell"):
        superpoint_edges(coord, superpoint, point_scene, 0.0)
    empty, _ = superpoint_edges(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                0.05)
    assert empty.shape == (0, 2)


def test_edges_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    coord = torch.rand(300, 3, generator=g) * torch.tensor([0.6, 0.4, 0.3])
    superpoint = torch.randint(0, 25, (300,), generator=g)
    point_scene = (superpoint >= 15).long()  # superpoints 15.. belong to scene 1, in the same frame
    cell = 0.07
    edges, contact = superpoint_edges(coord, superpoint, point_scene, cell)
    ijk = torch.floor(coord.double() / cell).long()
    entries = sorted({(tuple(c), int(s), int(sc)) for c, s, sc in zip(ijk.tolist(), superpoint, point_scene)})
    expect: dict[tuple[int, int], int] = {}
    for (ca, sa, sca), (cb, sb, scb) in itertools.combinations(entries, 2):
        near = max(abs(x - y) for x, y in zip(ca, cb)) <= 1
        if near and sca == scb and sa != sb:
            key = (min(sa, sb), max(sa, sb))
            expect[key] = expect.get(key, 0) + 1
    got = {tuple(e): int(c) for e, c in zip(edges.tolist(), contact)}
    assert got == expect
    assert (edges[:, 0] < edges[:, 1]).all()


def test_shape_of_a_plane_and_a_rod() -> None:
    g = torch.Generator().manual_seed(1)
    plane = torch.cat([torch.rand(200, 2, generator=g), torch.full((200, 1), 0.7)], 1)  # z = 0.7
    rod = torch.cat([torch.zeros(50, 2), torch.linspace(0, 2, 50)[:, None]], 1) + torch.tensor([3.0, 0, 0])
    coord = torch.cat([plane, rod])
    superpoint = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(50, dtype=torch.long)])
    normal, extent = superpoint_shape(coord, superpoint, 3)
    assert abs(abs(float(normal[0, 2])) - 1) < 1e-5  # the plane's normal is z, up to sign
    assert float(extent[0, 0]) < 1e-5 and float(extent[0, 1]) > 0.2
    assert float(extent[1, 1]) < 1e-5 and abs(float(extent[1, 2]) - float(rod[:, 2].std(unbiased=False))) < 1e-4
    assert (extent[2] == 0).all()  # superpoint without points


def test_average_linkage_by_hand() -> None:
    # {0, 1} and {2, 3} form first (0.95 each). Between them: 1-2 at 0.9 but 0-3 at 0.0 and 0-2 at 0.2, mean 0.37:
    # they stay apart, where connected components of the edges above 0.5 would join all four. 4 is alone.
    edges = np.array([[0, 1], [2, 3], [1, 2], [0, 3], [0, 2]])
    prob = np.array([0.95, 0.95, 0.9, 0.0, 0.2])
    assert average_linkage(5, edges, prob).tolist() == [0, 0, 2, 2, 4]
    # With 0-3 at 0.8 the mean is (0.9 + 0.8 + 0.2) / 3 = 0.63: one group, named by its smallest node.
    assert average_linkage(5, edges, np.array([0.95, 0.95, 0.9, 0.8, 0.2])).tolist() == [0, 0, 0, 0, 4]
    assert average_linkage(3, np.zeros((0, 2)), np.zeros(0)).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="edge node ids"):
        average_linkage(2, edges, prob)


def _naive_average_linkage(n: int, edges: np.ndarray, prob: np.ndarray, threshold: float) -> list[int]:
    groups = [{i} for i in range(n)]
    while True:
        best, pair = threshold, None
        for x, y in itertools.combinations(range(len(groups)), 2):
            ps = [p for (a, b), p in zip(edges.tolist(), prob) if (a in groups[x] and b in groups[y])
                  or (a in groups[y] and b in groups[x])]
            if ps and np.mean(ps) > best:
                best, pair = float(np.mean(ps)), (x, y)
        if pair is None:
            break
        x, y = pair
        groups[x] |= groups.pop(y)
    label = [0] * n
    for grp in groups:
        for i in grp:
            label[i] = min(grp)
    return label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_linkage_matches_the_naive_algorithm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 14
    pairs = np.array([(a, b) for a in range(n) for b in range(a + 1, n) if rng.random() < 0.3])
    prob = rng.random(len(pairs))
    assert average_linkage(n, pairs, prob, 0.5).tolist() == _naive_average_linkage(n, pairs, prob, 0.5)
