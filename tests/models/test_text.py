"""moelab/models/text.py: the byte-level language model is causal under every router it accepts."""
import pytest
import torch

from moelab.models.builder import build_model
from moelab.models.text import ByteTransformer
from moelab.training.config import parse_args, validate

# ----------------------------------------------------------------------------- causality

T = 16
ALLOWED = {
    "hard": "--gating hard",
    "topk": "--gating topk",
    "noisy-topk": "--gating noisy-topk",
    "gumbel": "--gating gumbel",
    "topk+shared": "--gating topk --shared-experts 1",
    "hard+position": "--gating hard --drop-policy position --capacity-factor 1.0",
    "topk+bias": "--gating topk --bias-balance-rate 0.01",
    "topk+cosine": "--gating topk --router-score cosine",
    "dense": "--model dense",
}
SMALL = (f"--arch gpt --dataset python-stdlib --experts 4 --top-k 2 --vit-dim 32 --vit-heads 2 --vit-depth 2 "
         f"--moe-every 1 --expert-hidden 16 --context {T}")


def lm(flags: str, tmp_path) -> ByteTransformer:
    cfg = parse_args(f"{SMALL} {flags} --out {tmp_path / 'runs'}".split())
    validate(cfg)                                                          # a setting the CLI accepts
    torch.manual_seed(0)
    model = build_model(cfg.model_spec(), (T,), 256)
    assert isinstance(model, ByteTransformer) and model.causal
    for block in model.blocks:                                             # a bias that moves the choice
        router = getattr(block.ffn, "router", None)
        if router is not None and getattr(router, "bias_rate", 0):
            router.selection_bias.copy_(torch.randn(4) * 0.3)
    return model


def logits_of(model, tokens: torch.Tensor, train: bool) -> torch.Tensor:
    if train:
        torch.manual_seed(1)                                               # the same noise draw each time
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ALLOWED)
def test_a_later_byte_never_changes_an_earlier_logit(name, train, tmp_path):
    model = lm(ALLOWED[name], tmp_path).train(train)
    generator = torch.Generator().manual_seed(2)
    batch = 2
    tokens = torch.randint(0, 256, (batch, T), generator=generator)
    before = logits_of(model, tokens, train)
    assert before.shape == (batch * T, 256)
    dropless = "position" not in name
    later_changed = 0
    for b in range(batch):
        for t in range(T - 1):
            changed = tokens.clone()
            changed[b, t + 1] = (changed[b, t + 1] + 1 + torch.randint(0, 255, (1,), generator=generator)) % 256
            after = logits_of(model, changed, train)
            flat = b * T + t                                               # this byte, in the flattened batch
            # Everything before it in the batch is untouched: its own earlier bytes and, for a router whose
            # capacity serves tokens in batch order, the sequences before it.
            torch.testing.assert_close(after[:flat + 1], before[:flat + 1], rtol=1e-5, atol=1e-5)
            if dropless:                                                   # other sequences: not at all
                other = torch.ones(batch * T, dtype=torch.bool)
                other[b * T:(b + 1) * T] = False
                torch.testing.assert_close(after[other], before[other], rtol=1e-5, atol=1e-5)
            later_changed += not torch.allclose(after[flat + 1:(b + 1) * T], before[flat + 1:(b + 1) * T])
    assert later_changed == batch * (T - 1)                                # the test is not vacuous


def test_capacity_in_batch_order_drops_tokens_and_stays_causal_in_a_single_sequence(tmp_path):
    model = lm(ALLOWED["hard+position"], tmp_path).eval()
    tokens = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        output = model(tokens)
    assert sum(int(r.dropped_counts().sum()) for r in output.routings) > 0   # capacity binds here
    for t in range(T - 1):
        changed = tokens.clone()
        changed[0, t + 1:] = (changed[0, t + 1:] + 7) % 256
        with torch.no_grad():
            after = model(changed)
        torch.testing.assert_close(after.logits[:t + 1], output.logits[:t + 1], rtol=1e-5, atol=1e-5)
        for old, new in zip(output.routings, after.routings):
            assert torch.equal(old.weights[:t + 1] > 0, new.weights[:t + 1] > 0)


def test_what_the_language_model_refuses_does_see_later_tokens():
    """Why the refusals are needed: with first choices served before second choices (position)
    or the most probable first (priority), a later token changes an earlier token's assignment."""
    from moelab.layers.capacity import capacity_keep
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3]])
    early_keep = []
    for later_choice in ([1, 0], [0, 1]):
        top = torch.tensor([[0, 1], later_choice])                          # token 0 first, token 1 later
        early_keep.append(capacity_keep(top, probs.gather(1, top), 2, 0.5, "position")[0].tolist())
    assert early_keep[0] != early_keep[1]                                  # token 0's second expert
    top = torch.tensor([[0], [0]])
    for policy, expected in (("position", [True, False]), ("priority", [False, True])):
        assert capacity_keep(top, torch.tensor([[0.6], [0.7]]), 2, 0.5, policy)[:, 0].tolist() == expected


def test_the_language_model_gives_the_same_logits_and_gradients_with_every_expert_dispatch(tmp_path):
    from moelab.layers.experts import dispatch_as

    model = lm("--gating topk", tmp_path).train()
    tokens = torch.randint(0, 256, (3, T))
    results = {}
    for dispatch in ("grouped", "padded", "grouped_mm"):
        model.zero_grad()
        with dispatch_as(model, dispatch):
            torch.manual_seed(1)
            logits = model(tokens)
            logits = logits if torch.is_tensor(logits) else logits.logits
        logits.square().mean().backward()
        results[dispatch] = (logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    for dispatch in ("padded", "grouped_mm"):
        torch.testing.assert_close(results[dispatch][0], results["grouped"][0], rtol=1e-4, atol=1e-5)
        for got, want in zip(results[dispatch][1], results["grouped"][1]):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
