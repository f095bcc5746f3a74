"""Analyses of trained runs. For now one: the sharpness of the loss at the trained weights.

    python analysis.py sharpness RUN_DIR [RUN_DIR ...]                 # from project_moe/
    python analysis.py sharpness runs/mnist-moe-hard-e8-mlp-s* --samples 4096 --probes 64

For every run directory (written by train.py, with model.pt: the weights at the end of training,
not the best-validation ones that train.py tests; sweep.py deletes them) and for a fixed train
and test subset (the first --samples samples of each split), with H the Hessian of the mean
cross-entropy L(theta) = (1/N) sum_n CE(f(x_n; theta), y_n) over all model parameters theta:

  largest eigenvalue   power iteration  v <- Hv / ||Hv||,  lambda = v . Hv  (||v|| = 1), stopped
                       when |lambda_i - lambda_{i-1}| <= tol |lambda_i| or after --iters steps.
                       It converges to the eigenvalue of largest magnitude, with its sign: at a
                       minimum that is the largest eigenvalue; should a negative eigenvalue be
                       larger in magnitude than every positive one, that negative value comes out.
  trace                Hutchinson: tr(H) = E[z^T H z] for z with independent Rademacher (+-1)
                       entries; the mean over --probes draws and its standard error std / sqrt(P).
  loss curve           L(theta + t v / ||v||) along the top eigenvector v, t on a symmetric grid.

Hessian-vector products come from ``torch.func`` (forward-over-reverse: the directional
derivative of the gradient), batch by batch: Hv = (1/N) sum_batches H_batch v, where H_batch is
the Hessian of the summed loss of one batch, so memory is bounded by one evaluation batch.
Attention runs on PyTorch's math kernel during these products: the fused kernels cannot be
differentiated twice.

Routing. Top-k / argmax choices are piecewise constant in theta, so wherever they are defined
their derivative is zero: the Hessian here is the one of the loss with every routing decision
held fixed at the trained weights (the gate *values* still vary with the router weights). A
decision that flips within a step of size t is not seen by H; the loss curve, which re-routes
at every point, shows where that matters. Straight-through gates (``--hard-grad ste``,
``gumbel``) use a surrogate gradient; what is estimated for them is the derivative of that
surrogate. Expert-choice routing depends on the whole batch, so its batches have the run's
training batch size. The model is in evaluation mode: no dropout, no router noise, and the
auxiliary losses are not part of L.

Output (in --out): sharpness.csv, one row per run and split, and sharpness_curves.csv, one row
per run, split and t. Exit codes: 0 done, 2 bad input (nothing is written).

The code is in moelab/study/sharpness.py; this file is its command line.
"""
import sys

from moelab.study.sharpness import main

if __name__ == "__main__":
    sys.exit(main())
