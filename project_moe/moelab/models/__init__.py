"""Models: the spec, MoE and dense classifiers, trunks, the transformer room, the ViT, the builder, accounting.

They need torch and the layers alone (the byte models read the vocabulary from ``data.types``):
``import moelab.models`` loads no pandas, data loading, training or study code."""
from .builder import build_model
from .classifier import DenseClassifier, MoEClassifier, build_dense_matched
from .cost import model_cost
from .output import ModelOutput
from .spec import ModelSpec
from .text import ByteTransformer
from .vit import ViTClassifier

__all__ = ["build_model", "DenseClassifier", "MoEClassifier", "build_dense_matched", "ModelOutput", "model_cost",
           "ModelSpec", "ByteTransformer", "ViTClassifier"]
