"""The linear-evaluation protocols on real (small) encoders and synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_fixtures import IMAGE_SIZE, ColourImages, PatternImages, write_encoder

from pretrain.checkpoint import load_encoder
from transfer.features import FeatureCache
from transfer.linear.evaluate import evaluate_encoder
from transfer.linear.protocol import (
    FastRecipe,
    KnnRecipe,
    PaperRecipe,
    cached_features,
    eval_transform,
    fit_linear_lbfgs,
    knn_predictions,
    train_linear_paper,
    train_transform,
)


def separable_features(n_per_class: int, num_classes: int, dim: int, seed: int):
    """Gaussian clusters whose centres are far apart relative to the noise: linearly separable."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, size=(num_classes, dim)) * 6
    labels = np.repeat(np.arange(num_classes), n_per_class)
    features = centres[labels] + rng.normal(0, 0.5, size=(labels.size, dim))
    order = rng.permutation(labels.size)
    return features[order].astype(np.float32), labels[order]


def test_lbfgs_probe_reaches_100_percent_on_separable_features():
    train_x, train_y = separable_features(60, 5, 32, seed=0)
    test_x, test_y = separable_features(60, 5, 32, seed=0)  # same centres and labels
    test_x = test_x + np.random.default_rng(1).normal(0, 0.5, size=test_x.shape).astype(np.float32)
    probe, info = fit_linear_lbfgs(train_x, train_y, 5, FastRecipe(max_iter=200), device="cpu")
    assert info["train_top1"] == 100.0
    assert (probe.predict(test_x) == test_y).mean() == 1.0


def test_lbfgs_probe_needs_a_true_linear_boundary():
    """XOR labels are not linearly separable: the probe must stay far from 100% (guards the check above)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(400, 2)).astype(np.float32)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
    probe, info = fit_linear_lbfgs(x, y, 2, FastRecipe(max_iter=200), device="cpu")
    assert info["train_top1"] < 75.0


def brute_force_knn(train_x, train_y, test_x, num_classes, k, temperature):
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    predictions = []
    for query in test.astype(np.float64):
        similarities = train.astype(np.float64) @ query
        nearest = sorted(range(len(similarities)), key=lambda j: -similarities[j])[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[train_y[j]] += np.exp(similarities[j] / temperature)
        predictions.append(int(np.argmax(votes)))
    return np.array(predictions)


@pytest.mark.parametrize("k", [1, 7, 200])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    train_x = rng.normal(size=(300, 16)).astype(np.float32)
    train_y = rng.integers(0, 4, size=300)
    test_x = rng.normal(size=(50, 16)).astype(np.float32)
    predicted = knn_predictions(train_x, train_y, test_x, 4, KnnRecipe(k=k, temperature=0.07))
    expected = brute_force_knn(train_x, train_y, test_x, 4, k, 0.07)
    assert predicted.shape == (50,)
    np.testing.assert_array_equal(predicted, expected)


def test_transforms_give_normalised_tensors_of_the_checkpoint_size():
    images = ColourImages(2, size=40)  # larger than the checkpoint's image size
    image, _ = images[0]
    for transform in (eval_transform(IMAGE_SIZE, [0.5] * 3, [0.25] * 3), train_transform(IMAGE_SIZE, [0.5] * 3, [0.25] * 3)):
        tensor = transform(image)
        assert tensor.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    plain = eval_transform(IMAGE_SIZE, [0.0] * 3, [1.0] * 3)(image)
    assert 0.0 <= float(plain.min()) and float(plain.max()) <= 1.0


def test_feature_cache_is_reused_and_keyed_by_checkpoint_and_split(tmp_path, loaded_encoder):
    images = ColourImages(12)
    cache = FeatureCache(tmp_path / "features")
    first = cached_features(loaded_encoder, images, "colours", "train", cache, "cpu")
    second = cached_features(loaded_encoder, images, "colours", "train", cache, "cpu")
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (12, loaded_encoder.feature_dim) and first.dtype == np.float32
    cached_features(loaded_encoder, images, "colours", "test", cache, "cpu")
    other = load_encoder(write_encoder(tmp_path / "other.pt", seed=1))
    other_features = cached_features(other, images, "colours", "train", cache, "cpu")
    assert cache.misses == 3
    assert not np.allclose(other_features, first)
    # a new cache object over the same folder reads the stored file (across processes and runs)
    reread = FeatureCache(tmp_path / "features")
    np.testing.assert_array_equal(cached_features(loaded_encoder, images, "colours", "train", reread, "cpu"), first)
    assert (reread.hits, reread.misses) == (1, 0)


def test_fast_protocol_end_to_end_and_second_run_hits_the_cache(tmp_path, loaded_encoder):
    train, test = ColourImages(60, seed=0), ColourImages(30, seed=0)
    cache = FeatureCache(tmp_path / "features")
    kwargs = dict(dataset_name="colours", num_classes=3, cache=cache, protocol="fast", device="cpu",
                  knn=KnnRecipe(k=10))
    first = evaluate_encoder(loaded_encoder, train, test, **kwargs)
    assert first.linear_top1 == 100.0  # class = image colour: separable even for a random encoder
    assert first.knn_top1 == 100.0
    assert first.linear_correct.shape == (30,)
    assert not first.info["features_train_cached"] and not first.info["features_test_cached"]
    second = evaluate_encoder(loaded_encoder, train, test, **kwargs)
    assert second.info["features_train_cached"] and second.info["features_test_cached"]
    np.testing.assert_array_equal(first.linear_predictions, second.linear_predictions)


def test_paper_protocol_keeps_the_encoder_frozen_and_resumes_exactly(tmp_path, loaded_encoder):
    train = ColourImages(48, seed=0)
    before = {k: v.clone() for k, v in loaded_encoder.model.state_dict().items()}
    recipe = PaperRecipe(batch_size=16, epochs=2)
    straight, log = train_linear_paper(loaded_encoder, train, 3, recipe, seed=3, device="cpu")
    assert log.epochs_run == 2 and len(log.epoch_losses) == 2 and log.seconds_forward > 0
    for key, value in loaded_encoder.model.state_dict().items():
        assert torch.equal(value, before[key]), f"encoder weight {key} changed"
    # a job killed after epoch 1 and run again continues from the state file
    state = tmp_path / "state.pt"
    train_linear_paper(loaded_encoder, train, 3, PaperRecipe(batch_size=16, epochs=1), seed=3, device="cpu",
                       state_path=state)
    resumed, resumed_log = train_linear_paper(loaded_encoder, train, 3, recipe, seed=3, device="cpu",
                                              state_path=state)
    assert (resumed_log.resumed_from_epoch, resumed_log.epochs_run) == (1, 1)
    torch.testing.assert_close(resumed.weight, straight.weight)
    torch.testing.assert_close(resumed.bias, straight.bias)
    assert resumed_log.epoch_losses == pytest.approx(log.epoch_losses)
    # another seed is another run: the state file is not used
    _, other_log = train_linear_paper(loaded_encoder, train, 3, recipe, seed=4, device="cpu", state_path=state)
    assert other_log.resumed_from_epoch == 0 and other_log.epochs_run == 2


def test_paper_protocol_learns_patterns_through_augmentation(loaded_encoder):
    train, test = PatternImages(96, seed=0), PatternImages(60, seed=1)
    probe, log = train_linear_paper(loaded_encoder, train, 3, PaperRecipe(batch_size=16, epochs=12),
                                    seed=0, device="cpu")
    from transfer.linear.protocol import compute_features

    accuracy = (probe.predict(compute_features(loaded_encoder, test, "cpu")) == test.labels).mean()
    assert log.epoch_losses[-1] < 0.6 * log.epoch_losses[0], log.epoch_losses
    assert accuracy >= 0.7, accuracy  # chance is 1/3; SGD's last iterate is noisy on 96 images


def test_bad_inputs_are_named(loaded_encoder, tmp_path):
    features = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"labels span \[0, 5\], expected \[0, 2\]"):
        fit_linear_lbfgs(features, np.array([0, 1, 2, 5]), 3, device="cpu")
    with pytest.raises(ValueError, match="protocol 'linear' is not one of paper, fast"):
        evaluate_encoder(loaded_encoder, ColourImages(3), ColourImages(3), dataset_name="c", num_classes=3,
                         cache=FeatureCache(tmp_path), protocol="linear")


def test_paired_difference_counts_discordant_images_and_tests_them():
    from transfer.linear.paired import paired_difference

    a = np.array([1] * 60 + [0] * 10 + [1] * 25 + [0] * 5)  # 85 right
    b = np.array([1] * 60 + [1] * 10 + [0] * 25 + [0] * 5)  # 70 right
    result = paired_difference(a * 100, b * 100, bootstrap=2000)
    assert (result.n, result.only_a_right, result.only_b_right) == (100, 25, 10)
    assert result.delta == pytest.approx(15.0)
    assert result.ci95_low < 15.0 < result.ci95_high and result.ci95_low > 0
    assert result.p_value == pytest.approx(0.0167, abs=0.001)  # exact binomial, 25 of 35 discordant
    same = paired_difference(a, a, bootstrap=100)
    assert (same.delta, same.p_value, same.ci95_low, same.ci95_high) == (0.0, 1.0, 0.0, 0.0)


def test_closed_form_gradient_matches_autograd():
    from torch.nn import functional as F

    from transfer.linear.protocol import softmax_regression_loss

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (50,), generator=generator)
    weight = torch.randn(4, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    reference = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * 0.01 * weight.pow(2).sum()
    reference.backward()
    loss, grad_weight, grad_bias = softmax_regression_loss(x, F.one_hot(y, 4).double(), weight.detach(), bias.detach(), 0.01)
    torch.testing.assert_close(loss, reference.detach())
    torch.testing.assert_close(grad_weight, weight.grad)
    torch.testing.assert_close(grad_bias, bias.grad)
