"""`python -m transfer.detection convert CKPT --to detectron2|torchvision --out FILE`

detectron2: a .pkl for MODEL.WEIGHTS (Detectron2 backbone names, matching heuristics on).
torchvision: a state dict for `model.backbone.body` of a torchvision R-CNN (checked by a strict load).
Also `embedded ROOT` builds the embedded digits COCO dataset at ROOT, and `check ROOT` checks a COCO
2017 layout (json structure, polygons, keypoint triplets, image files); `voc-embedded ROOT` and `voc-check ROOT`
do the same for PASCAL VOC (a VOCdevkit).
"""

from __future__ import annotations

import argparse
import sys

from ringbench_common.overrides import comma_list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfer.detection", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert an encoder checkpoint for a detection engine")
    convert.add_argument("checkpoint", help="a RingBench encoder file (pretrain.checkpoint format)")
    convert.add_argument("--to", required=True, choices=("detectron2", "torchvision"))
    convert.add_argument("--out", required=True, help="output file (.pkl for detectron2, .pth for torchvision)")
    embedded = commands.add_parser("embedded", help="build the embedded digits COCO dataset")
    embedded.add_argument("root")
    check = commands.add_parser("check", help="check a COCO 2017 layout")
    check.add_argument("root")
    check.add_argument("--kinds", default="instances,keypoints", help="comma list of instances, keypoints")
    voc_embedded = commands.add_parser("voc-embedded", help="build the embedded digits VOCdevkit")
    voc_embedded.add_argument("root")
    voc_check = commands.add_parser("voc-check", help="check a VOCdevkit (VOC2007 trainval + test, VOC2012 trainval)")
    voc_check.add_argument("root")
    voc_check.add_argument("--train-years", default="2007,2012", help="comma list of 2007, 2012")
    args = parser.parse_args(argv)

    from pretrain.checkpoint import CheckpointError
    from transfer.detection.coco_data import CocoDataError
    from transfer.detection.convert import ConversionError
    from transfer.detection.voc_data import VocDataError

    try:
        if args.command == "convert":
            from transfer.detection.convert import (
                convert_checkpoint_to_detectron2,
                convert_checkpoint_to_torchvision,
            )

            convert_fn = convert_checkpoint_to_detectron2 if args.to == "detectron2" else convert_checkpoint_to_torchvision
            out = convert_fn(args.checkpoint, args.out)
            print(f"wrote {out} ({args.to})")
            from pretrain.checkpoint import load_encoder

            view = load_encoder(args.checkpoint, cmc_features=None).metadata.get("input_view", "rgb")
            if view != "rgb":
                print(f"note: this encoder was trained on the {view!r} input view; render it on every image "
                      "before normalisation (pretrain.views.view_pixels), as bench.run --suite coco_det does",
                      file=sys.stderr)
        elif args.command == "voc-embedded":
            from transfer.detection.voc_embedded import build_embedded_voc

            print(build_embedded_voc(args.root))
        elif args.command == "voc-check":
            from transfer.detection.voc_data import VOC_CLASSES, check_voc_root
            from transfer.detection.voc_embedded import embedded_classes

            classes = embedded_classes(args.root) or VOC_CLASSES
            for summary in check_voc_root(args.root, list(comma_list(args.train_years)), classes).values():
                print(f"{summary.split}: {summary.num_images} images, {summary.num_objects} objects "
                      f"({summary.num_difficult} difficult), {len(summary.classes)} classes")
        elif args.command == "embedded":
            from transfer.detection.embedded import build_embedded_coco

            print(build_embedded_coco(args.root))
        else:
            from transfer.detection.coco_data import check_coco_root

            kinds = list(comma_list(args.kinds))
            for (kind, split), summary in sorted(check_coco_root(args.root, kinds).items()):
                print(f"{kind}/{split}: {summary.num_images} images, {summary.num_annotations} annotations, "
                      f"{summary.images_without_annotations} images without annotations, {len(summary.categories)} categories")
    except (CheckpointError, ConversionError, CocoDataError, VocDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
