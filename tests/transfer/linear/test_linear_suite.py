"""The linear suite: task lists, up-front checks, and cells on datasets in their real on-disk layouts."""

from __future__ import annotations

import pytest
from linear_layouts import write_cifar10, write_cifar100, write_imagefolder, write_stl10

from bench.suite import Cell, InputError
from bench.suites.linear import METRIC_KNN, METRIC_LINEAR, LinearSuite


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root)
    write_cifar100(root)
    write_stl10(root)
    write_imagefolder(root)
    return root


def typed(options, data_root=None):
    """The suite's typed options, parsed as the plan parses them."""
    return LinearSuite().parse_options(options, data_root)


def task_names(options, data_root):
    return [task.name for task in LinearSuite().tasks(typed(options), data_root)]


def test_task_names_state_dataset_and_protocol(data_root, tmp_path):
    assert task_names({}, None) == ["digits/paper"]
    assert task_names({"protocol": "fast"}, None) == ["digits/fast"]
    assert task_names({"epochs": "5"}, None) == ["digits/paper-5ep"]
    assert task_names({"protocol": "fast"}, data_root) == ["cifar10/fast", "cifar100/fast", "stl10/fast", "imagenet/fast"]
    only_cifar = tmp_path / "only"
    write_cifar10(only_cifar)
    assert task_names({}, only_cifar) == ["cifar10/paper"]
    tasks = LinearSuite().tasks(typed({"datasets": "imagenet,digits", "imagenet_classes": "3"}), data_root)
    assert [(t.params["dataset"], t.params["test_split"], t.params["num_classes"]) for t in tasks] == [
        ("imagenet", "val", 3), ("digits", "test", 10)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"protocol": "linear"}, "protocol='linear': expected one of paper, fast"),
        ({"epochs": "0"}, "epochs='0': expected an integer >= 1"),
        ({"epochs": "ten"}, "epochs='ten': expected an integer"),
        ({"knn": "maybe"}, "knn='maybe': expected a boolean (true/false)"),
        ({"datasets": "mnist"}, "datasets='mnist': unknown mnist"),
        ({"learning_rate": "0.1"}, "unknown linear option 'learning_rate'"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(InputError) as raised:
        typed(options)
    assert message in str(raised.value)


def test_check_names_missing_and_incomplete_datasets(data_root, tmp_path, encoder_file):
    suite = LinearSuite()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds none of the linear datasets.*cifar-10-batches-py"):
        suite.check(typed({}), empty, [encoder_file])
    with pytest.raises(InputError, match="need --data-root"):
        suite.check(typed({"datasets": "cifar100"}), None, [encoder_file])
    with pytest.raises(InputError, match="cifar-100-python"):
        suite.check(typed({"datasets": "cifar100"}), empty, [encoder_file])
    broken = tmp_path / "broken"
    write_cifar10(broken)
    (broken / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(InputError, match="missing test_batch"):
        suite.check(typed({"datasets": "cifar10"}), broken, [encoder_file])


def test_check_refuses_class_count_mismatch_and_bad_checkpoints(data_root, tmp_path, encoder_file):
    suite = LinearSuite()
    with pytest.raises(InputError, match="imagenet: the train split has 3 classes, expected 1000.*imagenet_classes"):
        suite.check(typed({"datasets": "imagenet"}), data_root, [encoder_file])
    suite.check(typed({"datasets": "imagenet", "imagenet_classes": 3}), data_root, [encoder_file])
    skewed = tmp_path / "skewed"
    write_imagefolder(skewed, classes=3)
    (skewed / "imagenet" / "val" / "n00000002").rename(skewed / "imagenet" / "val_extra")
    with pytest.raises(InputError, match="the val split has 2 classes, expected 3"):
        suite.check(typed({"datasets": "imagenet", "imagenet_classes": 3}), skewed, [encoder_file])
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"checkpoint refused: .*foreign\.pt: not a readable torch checkpoint"):
        suite.check(typed({"datasets": "cifar10"}), data_root, [encoder_file, foreign])


def make_cell(task, checkpoint, data_root, shared_dir, options, seed=0):
    return Cell(suite="linear", task=task, checkpoint=checkpoint, seed=seed, options=options,
                data_root=data_root, shared_dir=shared_dir, settings=typed(options, data_root))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "stl10", "imagenet"])
def test_fast_cells_read_each_layout_correctly(dataset, data_root, tmp_path, encoder_file, monkeypatch):
    """Classes are colours: a reader that keeps images and labels aligned gives (near) 100%."""
    monkeypatch.setenv("RINGBENCH_WORKERS", "0")
    options = {"datasets": dataset, "protocol": "fast", "imagenet_classes": 3, "knn_k": 5}
    suite = LinearSuite()
    suite.check(typed(options), data_root, [encoder_file])
    [task] = suite.tasks(typed(options, data_root), data_root)
    output = suite.run(make_cell(task, encoder_file, data_root, tmp_path / "shared", options), tmp_path / "cell")
    linear, knn = output.metrics[METRIC_LINEAR], output.metrics[METRIC_KNN]
    n_test = {"cifar10": 20, "cifar100": 100, "stl10": 20, "imagenet": 9}[dataset]
    assert linear.n == knn.n == n_test
    assert linear.sample_ids == [str(i) for i in range(n_test)]
    assert set(linear.samples) <= {0.0, 100.0}
    assert linear.mean >= (90.0 if dataset == "cifar100" else 100.0)  # 100 colours, 2 images each: close shades
    assert knn.mean >= 90.0
    assert output.info["protocol"] == "fast" and output.info["dataset"] == dataset


def test_linear_suite_feeds_a_cmc_encoder_its_views(data_root, tmp_path, monkeypatch):
    import json

    import numpy as np
    import torch
    from cmc_encoders import MEAN, STD, expected_features, write_cmc_encoder, write_old_cmc_encoder
    from torchvision import transforms as T

    from pretrain.data import eval_transform, open_dataset
    from transfer.linear.protocol import train_transform

    monkeypatch.setenv("RINGBENCH_WORKERS", "0")
    path = write_cmc_encoder(tmp_path / "cmc.pt")
    suite = LinearSuite()
    options = {"datasets": "cifar10", "protocol": "fast", "knn_k": 5}
    with pytest.raises(InputError, match="a CMC encoder file without metadata"):
        suite.check(typed(options), data_root, [write_old_cmc_encoder(tmp_path / "old.pt")])
    [task] = suite.tasks(typed(options, data_root), data_root)
    output = suite.run(make_cell(task, path, data_root, tmp_path / "shared", options), tmp_path / "cell")
    assert (output.info["input_view"], output.info["cmc_features"]) == ("lightness+lab_ab", "concat")
    assert output.info["feature_dim"] == 1024
    [parts] = [p for p in (tmp_path / "shared" / "features").glob("*.json") if json.loads(p.read_text())["split"] == "test"]
    cached = torch.from_numpy(np.load(parts.with_suffix(".npy")))
    test = open_dataset("cifar10", data_root, "test")
    transform = eval_transform(8, MEAN, STD)
    images = torch.stack([transform(test.image(i)) for i in range(len(test))])
    assert torch.allclose(cached, expected_features(images, "concat"), atol=1e-4)
    # the paper protocol re-augments with CMC's own pipeline before the encoder's views: no colour operation
    kinds = [type(step) for step in train_transform(8, MEAN, STD, {"method": {"name": "cmc"}, "data": {"augmentation": "cmc", "hflip": True}}).transforms]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
