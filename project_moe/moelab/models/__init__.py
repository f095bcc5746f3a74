"""Models: the spec, MoE and dense classifiers, trunks, the transformer room, the ViT, the builder, accounting."""
