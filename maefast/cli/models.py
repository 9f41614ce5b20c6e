"""`maefast models`: list the registered models (or those with published weights), with their parameter counts."""
from __future__ import annotations


def add_commands(subparsers) -> None:
    models = subparsers.add_parser("models", help="list registered models")
    models.add_argument("filter", nargs="?", default="",
                        help="shell wildcards, e.g. '*vit_s*' (as maefast.list_models)")
    models.add_argument("--pretrained", action="store_true",
                        help="only models with published weights, with their tags (create_model(..., pretrained=True))")
    models.add_argument("--params", action="store_true", help="also count parameters (builds each model)")
    models.add_argument("--flops", action="store_true",
                        help="also give the FLOPs of one crop at the model's input size and channel count: a "
                             "training step's (forward and backward) for the models that train, an embedding's "
                             "for the encoders (maefast.models.flops)")
    models.set_defaults(func=list_models_command)


def list_models_command(args) -> int:
    import torch

    from maefast.models import create_model, list_models
    from maefast.models.families import family_of
    from maefast.models.registry import PRETRAINED, split_name
    for name in list_models(args.filter, pretrained=args.pretrained):
        line = f"{name:45s}"
        if args.params or args.flops:
            with torch.device("meta"):
                model = create_model(name, **family_of(split_name(name)[0]).build_options)
            if args.params:
                line += f" {sum(p.numel() for p in model.parameters()) / 1e6:9.2f} M"
            if args.flops:
                kind = "train" if family_of(model).trainable else "embed"
                line += f" {crop_flops(model) / 1e9:10.1f} GFLOP/crop ({kind})"
        if name in PRETRAINED:
            line += f"  {PRETRAINED[name].description} ({PRETRAINED[name].hub_id})"
        print(line.rstrip())
    return 0


def crop_flops(model) -> int:
    """FLOPs of one crop with the model's configured channel count: a training step, or an embedding."""
    from maefast.models.families import family_of
    from maefast.models.flops import embedding_flops
    from maefast.models.registry import input_config
    config = input_config(model)
    family = family_of(model)
    if family.trainable:
        return family.training_flops(model, config.in_chans)
    return embedding_flops(config, config.in_chans)
