"""The generated Detectron2 VOC config diffed against MoCo's: only the differences docs/voc.md lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer.detection.configs import (
    VOC_24K,
    VocDetectionJob,
    detectron2_voc_config,
    embedded_voc_protocol,
    scale_schedule,
    voc_protocol,
)
from transfer.detection.voc_data import VOC_CLASSES

# facebookresearch/moco (commit 3402035), detection/configs/pascal_voc_R_50_C4_24k_moco.yaml merged over its
# bases pascal_voc_R_50_C4_24k.yaml and Base-RCNN-C4-BN.yaml, flattened; expected data, written out by hand.
MOCO_PASCAL_VOC_R_50_C4_24K_MOCO = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.NORM": "naiveSyncBN",
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
    "MODEL.MASK_ON": False,
    "MODEL.WEIGHTS": "See Instructions",
    "MODEL.ROI_HEADS.NUM_CLASSES": 20,
    "INPUT.MIN_SIZE_TRAIN": [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
    "INPUT.MIN_SIZE_TEST": 800,
    "DATASETS.TRAIN": ["voc_2007_trainval", "voc_2012_trainval"],
    "DATASETS.TEST": ["voc_2007_test"],
    "SOLVER.STEPS": [18000, 22000],
    "SOLVER.MAX_ITER": 24000,
    "SOLVER.WARMUP_ITERS": 100,
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
}

# The differences of docs/voc.md ("Differences from MoCo's config"), key -> ours on real data.
CHANGED = {"MODEL.WEIGHTS"}  # the encoder converted by transfer.detection.convert, not "See Instructions"
ADDED = {
    "MODEL.DEVICE",  # cuda on GPUs (cpu without one)
    "OUTPUT_DIR",  # the cell's folder
    "SEED",  # the fine-tuning seed (MoCo: Detectron2's -1, a random seed per run)
}


def flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, dotted + ".")
        else:
            out[dotted] = value
    return out


def real_job(tmp_path: Path, **overrides) -> VocDetectionJob:
    protocol = voc_protocol()
    values = dict(arch="resnet50", data_root=tmp_path, train_years=("2007", "2012"), classes=VOC_CLASSES,
                  schedule=protocol.schedule, input=protocol.input, pixel_mean=(0.485, 0.456, 0.406),
                  pixel_std=(0.229, 0.224, 0.225), output_dir=tmp_path / "out", seed=3, num_gpus=8, heads=protocol.heads,
                  precise_bn_iters=protocol.precise_bn_iters)
    return VocDetectionJob(**(values | overrides))


def test_generated_config_differs_from_mocos_only_as_documented(tmp_path):
    ours = flatten(detectron2_voc_config(real_job(tmp_path), tmp_path / "backbone.pkl"))
    moco = MOCO_PASCAL_VOC_R_50_C4_24K_MOCO
    differing = {key for key in moco if key in ours and ours[key] != pytest.approx(moco[key])}
    assert differing == CHANGED
    assert set(moco) - set(ours) == set()  # every key MoCo sets, we set
    assert set(ours) - set(moco) == ADDED
    assert ours["MODEL.WEIGHTS"] == str(tmp_path / "backbone.pkl") and ours["SEED"] == 3


def test_the_documented_differences_are_the_tested_ones():
    text = (Path(__file__).resolve().parents[3] / "docs" / "voc.md").read_text()
    section = text.split("## Differences from MoCo's config", 1)[1].split("\n## ", 1)[0]
    for key in CHANGED | ADDED:
        assert f"`{key}`" in section, key


def test_schedule_scaling_keeps_mocos_epochs():
    # half the batch: half the lr, twice the iterations and steps (the warmup too)
    half = scale_schedule(VOC_24K, 8)
    assert (half.base_lr, half.max_iter, half.steps, half.warmup_iters) == (0.01, 48000, (36000, 44000), 200)


def test_the_embedded_protocol_is_cpu_sized_and_stated_as_overrides(tmp_path):
    protocol = embedded_voc_protocol()
    job = real_job(tmp_path, arch="resnet18", classes=VOC_CLASSES[:10], schedule=protocol.schedule, input=protocol.input,
                   heads=protocol.heads, precise_bn_iters=protocol.precise_bn_iters, num_gpus=0)
    config = flatten(detectron2_voc_config(job, "w.pkl"))
    assert config["MODEL.ROI_HEADS.NUM_CLASSES"] == 10 and config["MODEL.RESNETS.DEPTH"] == 18
    assert config["INPUT.MIN_SIZE_TRAIN"] == [96] and config["INPUT.RANDOM_FLIP"] == "none"
    assert config["MODEL.ANCHOR_GENERATOR.SIZES"] == [[16, 32, 64]]
    assert config["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"] == 4
    assert config["SOLVER.CLIP_GRADIENTS.CLIP_TYPE"] == "full_model" and config["DATALOADER.NUM_WORKERS"] == 0
