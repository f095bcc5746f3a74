"""Published numbers the study sets its own results beside. They are quoted from the papers,
never computed here; every other number of the notebook and the report comes from results/.

Rokah, Veress, Caulk, Sharan 2026, "Mixture-of-Experts Models in Vision: Routing, Optimization,
and Generalization" (arXiv 2601.15021): CIFAR-10, ResNet-18 backbone with a dense, soft-MoE or
sparse-MoE (noisy top-2) classifier head, 50 epochs of SGD, one seed. Test accuracy in %, and the
Hessian's largest eigenvalue and trace of the training loss (train) and the eigenvalue on test
data (test).
"""
import pandas as pd

ROKAH_2026_HEADS = pd.DataFrame(
    {"label": ["dense", "soft", "noisy-top2"],
     "paper_test_acc": [86.44, 87.23, 87.17],
     "paper_top_eigenvalue_train": [2.38, 1.10, 0.72],
     "paper_trace_train": [22.75, 19.86, 15.23],
     "paper_top_eigenvalue_test": [63.87, 92.22, 68.71]})
