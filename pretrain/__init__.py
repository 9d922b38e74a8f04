"""Contrastive pretraining with NCE, Ring and other negative samplers."""

__version__ = "0.1.0"
