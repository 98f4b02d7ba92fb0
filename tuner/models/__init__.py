"""Model families: one registry, one small builder per family.

``build_model(family, img_size=..., **hparams)`` returns a plain ``nn.Module`` mapping
(B, 1, H, W) images to (B, 3) logits. Families from timm are built without pretrained weights;
``cswin``, ``dpt``, ``cvt``, ``cct`` and ``scratch`` are written here.
"""

from tuner.models.registry import FamilyInfo, build_model, family_info, list_families

__all__ = ["FamilyInfo", "build_model", "family_info", "list_families"]
