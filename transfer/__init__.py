"""Everything a checkpoint is transferred to: Meta-Dataset probes, COCO detection, linear evaluation."""
