"""`maefast models`: list the registered models with their parameter counts."""
from __future__ import annotations


def add_commands(subparsers) -> None:
    models = subparsers.add_parser("models", help="list registered models")
    models.add_argument("--params", action="store_true", help="also count parameters (builds each model)")
    models.set_defaults(func=list_models_command)


def list_models_command(args) -> int:
    import torch

    from maefast.models import create_model, list_models
    for name in list_models():
        if args.params:
            options = {"num_classes": 1000} if name.startswith("wsl_") else {}  # classifiers need a head size
            with torch.device("meta"):
                count = sum(p.numel() for p in create_model(name, **options).parameters())
            print(f"{name:40s} {count / 1e6:9.2f} M")
        else:
            print(name)
    return 0
