"""Models: registry (``create_model``, ``list_models``), 3D ResNet image encoders, text tower, CLIP."""

from silverclip.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
