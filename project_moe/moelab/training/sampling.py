"""Text from a trained byte-level language model (``sample.py``): the prompt's bytes, then one
byte at a time drawn from the model's next-byte distribution.

Legend: T context of the model, V = 256 byte values.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from ..data.types import VOCAB
from ..models.builder import build_model
from .config import Config, ConfigError
from .exits import EXIT_BAD_INPUT
from .run_files import RunFileError, load_checkpoint, read_config


@torch.no_grad()
def generate(model, prompt: bytes, tokens: int, temperature: float = 1.0, top_k: int = 0,
             generator: torch.Generator | None = None) -> bytes:
    """``prompt`` followed by ``tokens`` bytes drawn one at a time (the model sees the last T
    bytes); temperature 0 takes the most probable byte; ``top_k`` > 0 keeps only the k most
    probable bytes before drawing."""
    model.eval()
    device = next(model.parameters()).device
    out = list(prompt) or [ord("\n")]
    for _ in range(tokens):
        window = torch.tensor(out[-model.context:], device=device).unsqueeze(0)   # (1, t)
        logits = model(window).logits[-1].float()                               # (V,) after the last byte
        if temperature == 0:
            out.append(int(logits.argmax()))
            continue
        logits = logits / temperature
        if 0 < top_k < VOCAB:
            floor = logits.topk(top_k).values[-1]
            logits = logits.masked_fill(logits < floor, float("-inf"))
        out.append(int(torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator)))
    return bytes(out)


def load_language_model(run_dir: Path, weights: str = "best"):
    """The model of a run directory of --arch gpt on a language dataset, with its weights."""
    settings = read_config(run_dir / "config.json")
    names = {f.name for f in dataclasses.fields(Config)}
    cfg = Config(**{k: v for k, v in settings.items() if k in names})
    spec = cfg.model_spec()
    if not (spec.arch == "gpt" and spec.causal):
        raise ConfigError(f"{run_dir} holds a --arch {cfg.arch} model of --dataset {cfg.dataset}, not a language "
                          "model; sample.py needs a run of --arch gpt on python-stdlib or text:PATH")
    model = build_model(spec, (cfg.context,), VOCAB)
    state = load_checkpoint(run_dir / ("best.pt" if weights == "best" else "model.pt"))
    model.load_state_dict(state["model"] if weights == "best" else state)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print text written by a trained byte-level language model.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="run directory of python train.py --arch gpt on a text dataset")
    parser.add_argument("--prompt", default="def ", help="text the model continues")
    parser.add_argument("--tokens", type=int, default=300, help="bytes to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: most probable byte)")
    parser.add_argument("--top-k", type=int, default=0, help="draw among the k most probable bytes only (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    parser.add_argument("--weights", choices=("best", "final"), default="best",
                        help="best.pt (best validation epoch) or model.pt (last epoch)")
    args = parser.parse_args(argv)
    try:
        if args.tokens < 0 or args.temperature < 0 or args.top_k < 0:
            raise ConfigError("--tokens, --temperature and --top-k must be >= 0")
        if not (args.run_dir / "config.json").is_file():
            raise ConfigError(f"{args.run_dir} has no config.json; pass a run directory written by train.py")
        model = load_language_model(args.run_dir, args.weights)
    except (ConfigError, RunFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    text = generate(model, args.prompt.encode("utf-8"), args.tokens, args.temperature, args.top_k,
                    torch.Generator().manual_seed(args.seed))
    sys.stdout.write(text.decode("utf-8", errors="replace") + "\n")
    return 0
