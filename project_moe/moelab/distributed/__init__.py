"""Training on several processes with ``torch.distributed``: data and expert parallelism.

Legend: P processes (ranks), r this rank, B samples of a global batch, b_r this rank's share,
E experts, L = E / P experts per rank under expert parallelism, M assignments of this rank,
R rows this rank's experts receive, K expert outputs.

One process runs as if this package did not exist. Under ``torchrun`` every rank builds the
same model from the same seed, and :func:`parallelize` applies the parallelism to it from
this one place (the model files know nothing of process groups):
- every router gets a :class:`ShardedBatch` scope: the auxiliary losses come from sums over
  the whole batch (one all-reduce), expert-choice picks among the rows of the whole batch
  (one all-gather of the (N, E) router scores), noise is cut from one whole-batch draw;
- every BatchNorm becomes :class:`SyncBatchNorm2d` (statistics of the whole batch);
- with ``--expert-parallel``, rank r keeps experts r*L .. r*L+L-1 of every MLP bank and each
  MoE layer exchanges its rows through ``layers/expert_parallel.py``'s ``ExpertParallel``
  (all-to-all, counts first).
Each rank takes a contiguous share of every global batch, and its loss is its part of the
global-batch loss (cross-entropy summed over its rows / B; each auxiliary loss of the whole
batch with the gradient of its own rows), so that summing the gradients of the replicated
parameters over the ranks (:func:`sync_gradients`) gives the single-process gradient, and the
all-to-all backward gives each expert the sum of every rank's contribution.
Checkpoints hold the whole model in the single-process layout (:func:`model_state`).

Why not ``DistributedDataParallel`` and ``nn.SyncBatchNorm``: ``nn.SyncBatchNorm`` refuses CPU
tensors (it accepts only CUDA, HPU, XPU and private-use devices), and this code must train on
CPU with gloo as it does on CUDA with nccl. DDP averages the gradients over the ranks, while
here each rank's loss is already its part of the global-batch loss, so the plain sum is the
one-process gradient with no rescaling; DDP would also need the expert-parallel parameters
excluded from its all-reduce and ``find_unused_parameters`` for experts that get no rows in a
step. One flat all-reduce per step (:func:`sync_gradients`) and a 20-line batch norm keep the
P-process run equal to the one-process run, which the tests check to 1e-5.

This package takes the few settings it needs as arguments (:func:`check_fits_world`,
:func:`start`); it knows nothing of the command line. By concern:

    cluster.py         the rank's place (Cluster), the process group's start and stop, a rank's exit,
                       agreement collectives (bad input, stop signals), work on rank 0 first
    batches.py         each rank's share of a global batch, rows gathered back
    parallelize.py     ShardedBatch (the routers' batch scope) and parallelize()
    sync_batchnorm.py  SyncBatchNorm2d
    state.py           the gradient sum, model and optimiser state in the single-process layout

Each name below is imported from its module on first use.
"""
from ..exports import lazy_exports

_HOMES = {
    **dict.fromkeys(["Traffic", "Cluster", "SINGLE_PROCESS", "RefusedElsewhere", "ParallelismError", "world_from_env",
                     "check_fits_world", "start", "stop", "exit_process", "all_agree", "all_sum", "on_writer",
                     "local_first", "load_on_writer", "agreed_signal", "is_peer_failure", "summer", "barrier"],
                    "cluster"),
    **dict.fromkeys(["shard_sizes", "shard", "shard_batches", "gather_rows"], "batches"),
    **dict.fromkeys(["ShardedBatch", "parallelize"], "parallelize"),
    "SyncBatchNorm2d": "sync_batchnorm",
    **dict.fromkeys(["sync_gradients", "model_state", "load_model_state", "optimizer_state", "load_optimizer_state"],
                    "state"),
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
