"""`maefast models`: list the registered models (or those with published weights), with their parameter counts."""
from __future__ import annotations


def add_commands(subparsers) -> None:
    models = subparsers.add_parser("models", help="list registered models")
    models.add_argument("filter", nargs="?", default="",
                        help="shell wildcards, e.g. '*vit_s*' (as maefast.list_models)")
    models.add_argument("--pretrained", action="store_true",
                        help="only models with published weights, with their tags (create_model(..., pretrained=True))")
    models.add_argument("--params", action="store_true", help="also count parameters (builds each model)")
    models.set_defaults(func=list_models_command)


def list_models_command(args) -> int:
    import torch

    from maefast.models import create_model, list_models
    from maefast.models.families import family_of
    from maefast.models.registry import PRETRAINED, split_name
    for name in list_models(args.filter, pretrained=args.pretrained):
        line = f"{name:45s}"
        if args.params:
            with torch.device("meta"):
                model = create_model(name, **family_of(split_name(name)[0]).build_options)
                line += f" {sum(p.numel() for p in model.parameters()) / 1e6:9.2f} M"
        if name in PRETRAINED:
            line += f"  {PRETRAINED[name].description} ({PRETRAINED[name].hub_id})"
        print(line.rstrip())
    return 0
