"""moelab/study/grids.py: the grids, their runs and the one run of a configuration listed by several grids."""
from moelab.study import grids


def test_the_convergence_grids_compare_moe_with_both_dense_vits_at_depth_6_and_12():
    assert grids.CONVERGENCE_GRIDS == ("vit_convergence", "vit_convergence_deep")
    for depth, grid in ((6, "vit_convergence"), (12, "vit_convergence_deep")):
        runs = grids.runs(grid)
        assert {r.dataset for r in runs} == {grids.CIFAR, grids.FASHION}
        labels = {r.label for r in runs}
        assert labels == {f"d{depth}-moe-expert-choice", f"d{depth}-moe-top2", f"d{depth}-dense-active",
                          f"d{depth}-dense-params"}
        for run in runs:
            assert run.grid == grid and run.flags["vit_depth"] == depth and run.flags["moe_every"] == 2
            assert run.flags["epochs"] >= 15
    assert {"vit_convergence", "vit_convergence_deep"} <= set(grids.GRIDS)


def test_every_lm_moe_has_a_dense_model_of_its_total_parameters_within_one_and_a_half_percent():
    from moelab.models.builder import build_model
    from moelab.training.config import Config

    def total(name):
        flags = {k: v for k, v in {**grids.LM_BASE, **grids.LM_VARIANTS[name]}.items() if k != "step_time_rounds"}
        model = build_model(Config(**flags).model_spec(), (flags["context"],), 256)
        return sum(p.numel() for p in model.parameters())
    dense = {name: total(name) for name in ("dense-params", "dense-params-top1")}
    for moe in ("top2-e8", "top1-e8", "top8-e32", "top4-e32", "lossfree-top2-e8"):
        assert min(abs(total(moe) / d - 1) for d in dense.values()) < 0.015, moe   # routers: 1 % at E = 32


def test_a_configuration_listed_by_several_grids_is_one_run():
    every = grids.with_seeds(grids.full_grid(), (0, 1))
    shared = grids.owners(every)
    by_name = {f"{r.grid}/{r.name}": r for r in every}
    hard = by_name["moe_vs_dense/mnist-moe-hard-s0"]
    for alias in ("gating/mnist-hard-s0", "capacity/mnist-top1-dropless-s0", "balancing/mnist-switch-loss-s0",
                  "sharpness/mnist-hard-s0", "lr/mnist-moe-hard-lr0.002-s0"):
        assert shared[by_name[alias].key] is hard, alias
    # a default spelled out (linear router scores) is the same configuration; a seed is not
    assert by_name["vit_routers/fashion-mnist-topk-linear-s0"].key == by_name["vit/fashion-mnist-vit-moe-top2-s0"].key
    # the learning-rate grids' runs at the study's rate are the runs of the grids they sweep
    assert shared[by_name["lr_vit/fashion-mnist-vit-moe-top2-lr0.001-s0"].key] is by_name["vit/fashion-mnist-vit-moe-top2-s0"]
    assert shared[by_name["lr_lm/python-stdlib-lm-top2-e8-lr0.002-s1"].key] is by_name["lm/python-stdlib-lm-top2-e8-s1"]
    assert shared[by_name["lr_lm/python-stdlib-lm-top2-e8-lr0.001-s1"].key].grid == "lr_lm"
    assert by_name["gating/mnist-hard-s1"].key != hard.key
    assert by_name["gating/mnist-soft-s0"].key != hard.key
    # every key of the study is trained once, in the first grid that lists it
    assert len(shared) == len({r.key for r in every}) < len(every)


def test_every_run_of_a_grid_carries_the_name_it_is_registered_under():
    for name in grids.GRIDS:
        runs = grids.runs(name)
        assert runs and {run.grid for run in runs} == {name}
    assert grids.KEEP_WEIGHTS == {"sharpness", "cifar_heads"}
