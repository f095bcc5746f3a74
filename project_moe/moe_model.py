"""The door to the model: the experts E_1..E_N, the gating network g(x) and the dense baseline.

    y(x) = sum_i g_i(x) E_i(x)

The definitions live in the ``moelab`` package, so that an installed copy (``pip install -e .``)
works without this folder's scripts; this file gathers them under one name,
and says where each one is:

    experts        moelab/layers/experts.py     MLPExperts (stacked MLPs, sparse dispatch), ModuleExperts
    gating         moelab/layers/routers.py     build_router and the six routers; the Routing record
                                                in moelab/layers/routing.py
    the MoE layer  moelab/layers/moe.py         MoE(router, experts): sort by expert, run, index_add back
    classifiers    moelab/models/classifier.py  MoEClassifier, DenseClassifier, build_dense_matched
    ViT            moelab/models/vit.py         a ViT whose MLP blocks route patch tokens
    any model      moelab/models/builder.py     build_model(spec, in_shape, num_classes)
    their output   moelab/models/output.py      ModelOutput: logits, one Routing per MoE layer (none for
                                                a dense model), the unweighted auxiliary losses

    from moe_model import MoE, MLPExperts, build_router
    moe = MoE(build_router("topk", 784, 8, top_k=2), MLPExperts(8, 784, 128, 10))
    out = moe(x)              # x (N, 784) -> out.logits (N, 10), out.routing, out.aux (unweighted losses)
"""
import moelab
from moelab import *  # noqa: F403  (the package's front door, name for name)

__all__ = moelab.__all__
