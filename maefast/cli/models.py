"""`maefast models`: list the registered models with their parameter counts."""
from __future__ import annotations


def add_commands(subparsers) -> None:
    models = subparsers.add_parser("models", help="list registered models")
    models.add_argument("--params", action="store_true", help="also count parameters (builds each model)")
    models.set_defaults(func=list_models_command)


def list_models_command(args) -> int:
    import torch

    from maefast.models import create_model, list_models
    from maefast.models.families import family_of
    for name in list_models():
        if args.params:
            with torch.device("meta"):
                model = create_model(name, **family_of(name).build_options)
                count = sum(p.numel() for p in model.parameters())
            print(f"{name:40s} {count / 1e6:9.2f} M")
        else:
            print(name)
    return 0
