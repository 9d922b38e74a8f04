import numpy as np
import pytest
import torch

from pretrain.knn import knn_accuracy, knn_predict


def test_weighted_vote_by_hand():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 0, 1])
    # the query is closest to the class-1 point, but two class-0 points outvote it at k=3
    query = np.array([[0.6, 0.8]], dtype=np.float32)
    assert knn_predict(train, labels, query, k=1).tolist() == [1]
    sims = (train / np.linalg.norm(train, axis=1, keepdims=True)) @ (query[0] / np.linalg.norm(query[0]))
    votes0 = np.exp(sims[0] / 0.5) + np.exp(sims[1] / 0.5)
    votes1 = np.exp(sims[2] / 0.5)
    expected = 0 if votes0 > votes1 else 1
    assert knn_predict(train, labels, query, k=3, temperature=0.5).tolist() == [expected]


def test_separable_clusters_are_perfect_and_torch_matches_numpy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 5
    labels = rng.integers(0, 4, 400)
    feats = centres[labels] + rng.normal(size=(400, 16))
    acc = knn_accuracy(feats[:300], labels[:300], feats[300:], labels[300:], k=20)
    assert acc == 1.0
    acc_torch = knn_accuracy(torch.tensor(feats[:300]), torch.tensor(labels[:300]),
                             torch.tensor(feats[300:]), torch.tensor(labels[300:]), k=20)
    assert acc_torch == acc


def test_random_features_are_near_chance():
    rng = np.random.default_rng(1)
    acc = knn_accuracy(rng.normal(size=(2000, 8)), rng.integers(0, 10, 2000),
                       rng.normal(size=(2000, 8)), rng.integers(0, 10, 2000))
    assert 0.05 < acc < 0.16


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="train labels"):
        knn_accuracy(np.ones((3, 2)), np.zeros(2), np.ones((1, 2)), np.zeros(1))


def test_mixed_inputs_give_the_same_labels_on_the_cpu():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    from_numpy = knn_predict(feats[:50], labels[:50], feats[50:], k=5)
    mixed = knn_predict(torch.from_numpy(feats[:50]), labels[:50], feats[50:], k=5)
    assert mixed.device.type == "cpu" and torch.equal(mixed, from_numpy)
