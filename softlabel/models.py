"""Models by name (ours, torchvision's, timm's) and safe loading of their weights."""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.nn as nn

from softlabel import zoo
from softlabel.checkpoint import read_weights
from softlabel.cifar_resnet import DEPTHS, cifar_resnet
from softlabel.data import IMAGENET_MEAN, IMAGENET_STD
from softlabel.errors import UserError


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DemoCNN(nn.Module):
    """A small VGG-style network for the 32x32 demo digits (0.14M parameters at width 32)."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        c = width
        self.features = nn.Sequential(
            _conv_bn(3, c), _conv_bn(c, c), nn.MaxPool2d(2),
            _conv_bn(c, 2 * c), _conv_bn(2 * c, 2 * c), nn.MaxPool2d(2),
            _conv_bn(2 * c, 4 * c), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class MLPNet(nn.Module):
    """A normalization-free network: its result does not depend on how a batch is split."""

    def __init__(self, num_classes: int = 10, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 64, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


LOCAL_MODELS = {
    "democnn": lambda num_classes: DemoCNN(num_classes, width=32),
    "democnn_small": lambda num_classes: DemoCNN(num_classes, width=16),
    "mlpnet": lambda num_classes: MLPNet(num_classes),
}
LOCAL_MODELS.update({name: (lambda num_classes, name=name: cifar_resnet(name, num_classes)) for name in DEPTHS})
LOCAL_MODELS.update(zoo.MODELS)  # RepDistiller's CIFAR zoo (softlabel/zoo): no name clashes with the above


def model_source(name: str) -> str:
    """'local', 'torchvision' or 'timm': which library builds a model name (ours first)."""
    if name in LOCAL_MODELS:
        return "local"
    import torchvision.models
    if name in torchvision.models.list_models(module=torchvision.models):
        return "torchvision"
    import timm
    if timm.is_model(name):
        return "timm"
    if ours := zoo.from_repdistiller(name):
        raise UserError(f"unknown model '{name}': RepDistiller's {name} is '{ours}' here")
    raise UserError(f"unknown model '{name}': not one of ours ({', '.join(LOCAL_MODELS)}), "
                    f"nor a torchvision or timm classification model")


def create_model(name: str, num_classes: int, builder: Optional[str] = None) -> nn.Module:
    """A randomly initialised model (no download ever happens here). ``builder`` forces the
    library ('torchvision' or 'timm') when both know the name, e.g. resnet18."""
    builder = builder or model_source(name)
    if builder == "local":
        return LOCAL_MODELS[name](num_classes)
    if builder == "torchvision":
        import torchvision.models
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise UserError(f"torchvision has no model '{name}'")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    import timm
    if not timm.is_model(name):
        raise UserError(f"timm has no model '{name}'")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def default_normalization(name: str, model: Optional[nn.Module] = None,
                          builder: Optional[str] = None) -> tuple[list[float], list[float]]:
    """Input mean/std a model expects: CIFAR-100's for RepDistiller's zoo (what its teachers were
    trained with), timm's data config for timm models, else ImageNet's."""
    if name in zoo.MODELS:
        return list(zoo.CIFAR100_MEAN), list(zoo.CIFAR100_STD)
    if model is not None and (builder or model_source(name)) == "timm":
        import timm.data
        cfg = timm.data.resolve_data_config({}, model=model)
        return list(cfg["mean"]), list(cfg["std"])
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str, flag: str, name: str) -> None:
    own = model.state_dict()
    # files older than batch norm's num_batches_tracked lack it; load_state_dict fills it in (version < 2)
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        twin = zoo.TWINS.get(name)
        if twin and _fits(twin, state):
            raise UserError(f"{flag} {path}: holds a '{twin}' ({zoo.describe(twin)}), not a '{name}' "
                            f"({zoo.describe(name)}); name the model {twin}")
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (first {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]})")
        raise UserError(f"{flag} {path}: weights do not fit model '{name}': {'; '.join(parts)}")
    model.load_state_dict(state)


def classes_in_state(state: dict, path: str) -> int:
    """Output size of a classifier state_dict: the rows of its last 2-D weight."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not weights:
        raise UserError(f"{path}: cannot tell the number of classes from the weights; pass --num-classes")
    return int(weights[-1].shape[0])


def _fits(name: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` holds exactly the weights of model ``name`` (built on the meta device:
    no memory, no initialization)."""
    try:
        classes = classes_in_state(state, name)
    except UserError:
        return False
    with torch.device("meta"):
        own = create_model(name, classes).state_dict()
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)


# What upstream loads: PRISM, SRe2L, G-VBSM, EDC, FKD_SLG (--teacher_source pytorch) and WSLD build
# their torchvision teachers with ``pretrained=True``, which torchvision maps to IMAGENET1K_V1.
UPSTREAM_TORCHVISION_WEIGHTS = "IMAGENET1K_V1"
WEIGHTS_HELP = ("published weights by name, one for all teachers or A,B,C one per teacher (an empty item: the "
                "default): a torchvision weight name (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT = torchvision's "
                "current best) or a timm pretrained tag (a1_in1k: the teacher becomes ARCH.a1_in1k) (default: "
                "IMAGENET1K_V1, what upstream's pretrained=True loads; timm: its default tag); weight files "
                "go to --teacher-path")


def torchvision_weights(name: str, weights: Optional[str] = None, flag: str = "--teacher-weights"):
    """torchvision's weight enum member for ``name``: ``weights`` (a member name, or DEFAULT),
    else IMAGENET1K_V1 where published (upstream's pretrained=True), else torchvision's DEFAULT."""
    import torchvision.models
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        raise UserError(f"torchvision publishes no weights for '{name}'; pass --teacher-path FILE") from None
    if weights is None:
        weights = UPSTREAM_TORCHVISION_WEIGHTS if UPSTREAM_TORCHVISION_WEIGHTS in enum.__members__ else "DEFAULT"
    if weights not in enum.__members__:
        raise UserError(f"{flag} {weights}: torchvision's '{name}' has weights "
                        f"{', '.join(enum.__members__)} (a file: --teacher-path)")
    return enum[weights]


def torchvision_cached_weights(name: str, weights: Optional[str] = None
                               ) -> tuple[str, list[float], list[float], str]:
    """Path of torchvision's published weights ``weights`` (see ``torchvision_weights``) for
    ``name`` in the torch hub cache, their normalization and their name (DEFAULT resolved).
    Never downloads: a missing file is a one-line error saying what to do."""
    w = torchvision_weights(name, weights)
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(cache, os.path.basename(w.url))
    if not os.path.isfile(path):
        raise UserError(f"no weights for teacher '{name}' (torchvision {w.name}): pass --teacher-path FILE, "
                        f"or place {os.path.basename(w.url)} (from {w.url}) in {cache} (TORCH_HOME), or "
                        f"choose other weights with --teacher-weights; nothing is downloaded")
    tf = w.transforms()
    return path, list(tf.mean), list(tf.std), w.name


def timm_name(name: str, tag: Optional[str]) -> str:
    """``name`` with timm pretrained tag ``tag`` (ARCH.TAG); a name that has a tag keeps it unless
    ``tag`` contradicts it."""
    if not tag:
        return name
    arch, _, own = name.partition(".")
    if own and own != tag:
        raise UserError(f"--teacher-weights {tag}: teacher '{name}' already names timm tag '{own}'")
    return f"{arch}.{tag}"


def timm_tag(name: str) -> Optional[str]:
    """The pretrained tag timm resolves ``name`` to (its default tag when ``name`` has none)."""
    import timm.models
    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "tag", None) if cfg is not None else None


def timm_cached_weights(name: str) -> str:
    """Path of timm's published weights for ``name`` in the local Hugging Face cache (or the
    torch hub cache for old url-only weights). Never downloads."""
    import timm.models
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not have
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tags = timm.list_pretrained(name.partition(".")[0] + ".*")[:8]
        raise UserError(f"timm publishes no weights for '{name}'" + (f" (it has {', '.join(tags)})" if tags else "")
                        + "; pass --teacher-path FILE")
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE
        for filename in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))
        if os.path.isfile(path):
            return path
    where = (f"model.safetensors of the Hugging Face repo {cfg.hf_hub_id} in {HF_HUB_CACHE} (HF_HOME)"
             if cfg.hf_hub_id else f"{os.path.basename(cfg.url)} in {os.path.join(torch.hub.get_dir(), 'checkpoints')}")
    raise UserError(f"no weights for teacher '{name}' (timm): pass --teacher-path FILE, or place {where}; "
                    f"nothing is downloaded")


def read_weights_file(path: str, flag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``checkpoint.read_weights`` for .safetensors files too (as the Hugging Face cache holds them)."""
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path), {}
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{flag} {path}: not a readable safetensors file ({exc})") from None
    return read_weights(path, flag)
