"""COCO detection, instance segmentation and keypoint transfer of RingBench encoders.

convert      torchvision-named encoders -> Detectron2 pickles / torchvision detector backbones
coco_data    the COCO 2017 layout, json checks, a torch dataset for torchvision detectors
embedded     the embedded digits COCO dataset (built on first use)
configs      the fine-tuning protocol and the Detectron2 YAML it becomes
engines      torchvision_engine (pure PyPI) and detectron2_engine (optional, installed from source)
evaluate     COCOeval with shared metric names (bbox/AP, segm/AP, keypoints/AP, ...)
"""
