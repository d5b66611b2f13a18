"""RD4AD: anomaly detection via reverse distillation from a one-class embedding (Deng & Li, CVPR 2022).

1. a frozen, pretrained teacher E gives features at three levels (WideResNet-50 layer1-3: strides 4, 8, 16);
2. the trainable one-class bottleneck embedding (OCBE) fuses them: every level but the deepest is brought
   to the deepest level's grid by stride-2 3x3 convolutions (BN, ReLU), the three are concatenated and one
   residual stage (``ocbe_blocks`` bottleneck blocks, the first with stride 2) compresses them into a
   compact embedding one stride below the deepest level (2048 channels at stride 32 for WideResNet-50);
3. a student decoder D mirrors the teacher: one residual stage per level, deepest first, each starting with
   a stride-2 transposed convolution, so decoder stage k reproduces teacher level k's grid and width;
4. training: the student reconstructs the teacher's features from the embedding; the loss is summed over
   levels, of 1 - cos between teacher and student features (``loss``: flattened, as the official code);
5. the map: per level and position 1 - cos over channels, upsampled bilinearly to the image, summed over
   levels, Gaussian-smoothed (sigma 4); the image score is the map's maximum.

With the offline EfficientNet-Lite0 the teacher is tapped at strides 4, 8 and 16 (timm stages 1, 2, 3:
24, 40, 112 channels): the same three strides as WideResNet-50's layer1-3, so the OCBE and the decoder keep
RD4AD's structure exactly (two stride-2 convs from stride 4, one from stride 8, embedding at stride 32,
three decoder stages), only with the teacher's stage widths. Lite0's stride-32 stage (320 channels) plays
the part of WideResNet's unused layer4 and is not tapped.

Checked against the official code (hq-deng/RD4AD 6554076: ``resnet.py``, ``de_resnet.py``, ``test.py``; issue 22):
``tests/fixtures/parity/rd4ad.pt`` holds their encoder, BN_layer (OCBE) and decoder at 1/64 of Wide-ResNet-50-2's
widths (their classes and init) and their outputs; every stage (teacher, embedding, student, map, score) equals
theirs within 1e-5 (``results/faithfulness/``). One bug, fixed: the Gaussian padded maps with PyTorch's reflect
border where ``test.py`` calls ``scipy.ndimage.gaussian_filter`` (edge sample repeated), which changes the map
near its borders (``smoothing_padding='reflect'`` restores it; ``benchmarks/parity/faithfulness.py`` prints the
difference before and after). Their checkpoint (``{'bn': ..., 'decoder': ...}``) loads through ``authors.load``; BN_layer's
``conv4``/``bn4`` are built but never called and are ignored."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adlib.models.base import AnomalyModel, Prediction
from adlib.models.common import check_choice, gaussian_blur, image_score


@dataclass
class RD4ADConfig:
    """RD4AD settings. Paper / official code (hq-deng/RD4AD ``resnet.py``, ``de_resnet.py``, ``test.py``) values
    are the defaults, except the backbone (the offline EfficientNet-Lite0; the paper recipe sets WideResNet-50)."""

    backbone: str = "efficientnet_lite0"  # teacher E (paper: WideResNet-50-2, "wide_resnet50")
    # Teacher taps, shallow to deep, at strides s, 2s, 4s; None = the backbone's stages at strides 4, 8, 16
    # (paper: WideResNet layer1, layer2, layer3).
    layers: tuple | None = None
    pretrained: bool = True
    image_size: int | tuple[int, int] = 256  # paper: 256 x 256
    # timm keyword arguments that change the teacher's shape (a ResNet's ``channels``), with pretrained=False
    # and the teacher's weights from a checkpoint (``authors_config`` sets them). None: timm's own.
    backbone_kwargs: dict | None = None
    ocbe_blocks: int = 3  # bottleneck blocks in the OCBE's residual stage (official: 3, the first with stride 2)
    decoder_blocks: tuple[int, ...] = (3, 4, 6)  # blocks per decoder stage, deepest first (official: 3, 4, 6)
    # Inner width of a bottleneck block / its output width: 0.5 in Wide-ResNet-50-2 (official), 0.25 in ResNet-50.
    width_ratio: float = 0.5
    # OCBE output channels; None = 2 x the deepest tap's (official: 2048 = 2 x 1024).
    embedding_channels: int | None = None
    # "flattened": per level 1 - cos of the whole flattened feature maps, as the official ``loss_fucntion``;
    # "per_position": mean over positions of the per-position 1 - cos, as the paper's Eq. 3 writes it.
    loss: str = "flattened"
    smoothing_sigma: float = 4.0  # Gaussian sigma of the map in image pixels (official: 4, scipy truncate 4)
    # The Gaussian's border: "symmetric" is scipy.ndimage.gaussian_filter's (the edge sample repeated), what
    # test.py calls; "reflect" (PyTorch's) is what adlib used before the parity check found it (issue 22).
    smoothing_padding: str = "symmetric"
    align_corners: bool = True  # the map's bilinear upsampling (official: align_corners=True)
    score_rule: str = "max"  # image score from the map (official: max)
    topk_ratio: float = 0.01  # fraction of pixels for score_rule "topk_mean"


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def deconv2x2(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)


class Bottleneck(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 -> 1x1 with BN and ReLU and a projected shortcut when the shape changes.

    ``resample``: "down" makes the 3x3 conv stride 2 (the OCBE); "up" replaces it with a stride-2 2x2
    transposed conv (the decoder); None keeps the grid."""

    def __init__(self, cin: int, width: int, cout: int, resample: str | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv1x1(cin, width), nn.BatchNorm2d(width)
        if resample == "up":
            self.conv2 = deconv2x2(width, width)
        else:
            self.conv2 = conv3x3(width, width, 2 if resample == "down" else 1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, cout), nn.BatchNorm2d(cout)
        self.shortcut = None
        if resample is not None or cin != cout:
            project = deconv2x2(cin, cout) if resample == "up" else conv1x1(cin, cout, 2 if resample == "down" else 1)
            self.shortcut = nn.Sequential(project, nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


def residual_stage(cin: int, cout: int, blocks: int, width_ratio: float, resample: str) -> nn.Sequential:
    width = max(1, int(round(cout * width_ratio)))
    layers = [Bottleneck(cin, width, cout, resample)]
    layers += [Bottleneck(cout, width, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class OCBE(nn.Module):
    """One-class bottleneck embedding: multi-scale fusion (MFF) then one residual stage (OCE)."""

    def __init__(self, channels: list[int], embedding: int, blocks: int, width_ratio: float) -> None:
        super().__init__()
        self.fuse = nn.ModuleList()
        for level in range(len(channels) - 1):  # level i -> the deepest grid by one stride-2 conv per level
            steps = []
            for cin, cout in zip(channels[level:-1], channels[level + 1:]):
                steps += [conv3x3(cin, cout, 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            self.fuse.append(nn.Sequential(*steps))
        self.stage = residual_stage(channels[-1] * len(channels), embedding, blocks, width_ratio, "down")

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        fused = [f(x) for f, x in zip(self.fuse, features[:-1])] + [features[-1]]
        return self.stage(torch.cat(fused, dim=1))


class Decoder(nn.Module):
    """The student: one upsampling residual stage per teacher level, deepest first; returns shallow to deep."""

    def __init__(self, channels: list[int], embedding: int, blocks: tuple[int, ...], width_ratio: float) -> None:
        super().__init__()
        widths = [embedding] + channels[::-1]  # e.g. 2048 -> 1024 -> 512 -> 256
        self.stages = nn.ModuleList(
            residual_stage(cin, cout, n, width_ratio, "up") for cin, cout, n in zip(widths[:-1], widths[1:], blocks)
        )

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        outputs, x = [], embedding
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]


def _init_weights(module: nn.Module) -> None:
    """As the official code: Kaiming-normal (fan_out) for Conv2d, BN weight 1 and bias 0; transposed convs
    keep PyTorch's default (the official loop matches nn.Conv2d only)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _image_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class RD4AD(AnomalyModel):
    """RD4AD over a frozen teacher. ``tokenizer`` may be given (tests); otherwise it is built from the config."""

    name = "rd4ad"
    trainable = True

    def __init__(self, config: RD4ADConfig | None = None, tokenizer: nn.Module | None = None) -> None:
        config = config or RD4ADConfig()
        check_choice("loss", config.loss, ("flattened", "per_position"))
        check_choice("smoothing_padding", config.smoothing_padding, ("symmetric", "reflect"))
        image_score(torch.zeros(1, 1, 1), config.score_rule)
        if config.ocbe_blocks < 1 or any(b < 1 for b in config.decoder_blocks):
            raise ValueError(f"ocbe_blocks={config.ocbe_blocks}, decoder_blocks={config.decoder_blocks}: "
                             f"every stage needs at least one block")
        super().__init__(config)
        if tokenizer is None:
            from adlib import backbones

            layers = config.layers if config.layers is not None else _default_layers(config.backbone)
            tokenizer = backbones.create(config.backbone, layers=layers, pretrained=config.pretrained,
                                         timm_kwargs=config.backbone_kwargs)
        self.tokenizer = tokenizer
        for p in self.tokenizer.parameters():
            p.requires_grad_(False)
        self.tokenizer.eval()
        self.image_hw = _image_hw(config.image_size)
        self.channels, self.grids = self._probe()
        if len(config.decoder_blocks) != len(self.channels):
            raise ValueError(f"decoder_blocks={config.decoder_blocks}: need one entry per teacher level "
                             f"({len(self.channels)} levels)")
        embedding = config.embedding_channels or 2 * self.channels[-1]
        self.ocbe = OCBE(self.channels, embedding, config.ocbe_blocks, config.width_ratio)
        self.decoder = Decoder(self.channels, embedding, tuple(config.decoder_blocks), config.width_ratio)
        _init_weights(self.ocbe)
        _init_weights(self.decoder)

    def _probe(self) -> tuple[list[int], list[tuple[int, int]]]:
        probe = torch.zeros(1, 3, *self.image_hw, device=next(self.tokenizer.parameters()).device)
        try:
            with torch.no_grad():
                feats = self.tokenizer(probe)
        except Exception as error:
            raise ValueError(f"image_size={self.config.image_size} does not work with backbone "
                             f"{self.config.backbone!r}: {error}") from error
        grids = [tuple(f.shape[-2:]) for f in feats]
        # The mirrored structure needs every level at half the previous one's grid and an even deepest grid
        # (the embedding sits one stride-2 step below it and the decoder doubles back up).
        halves = all(a == (2 * b[0], 2 * b[1]) for a, b in zip(grids[:-1], grids[1:]))
        if len(grids) < 2 or not halves or grids[-1][0] % 2 or grids[-1][1] % 2:
            raise ValueError(f"RD4AD needs teacher levels at strides s, 2s, 4s, ... whose grids halve exactly and "
                             f"an even deepest grid; backbone {self.config.backbone!r} layers {self.config.layers} "
                             f"at image_size={self.config.image_size} give grids {grids} (use an image size that is "
                             f"a multiple of 2 x the deepest stride, e.g. 256 for strides 4-16)")
        return [f.shape[1] for f in feats], grids

    # ---- engine interface

    def feature_key(self) -> str | None:
        return self.tokenizer_key()

    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Teacher features, shallow to deep (frozen)."""
        if tuple(images.shape[-2:]) != self.image_hw:
            raise ValueError(f"RD4AD was built for {self.image_hw} inputs, got {tuple(images.shape[-2:])}; "
                             f"resize the data to image_size={self.config.image_size}")
        return list(self.tokenizer(images))

    def forward_features(self, teacher: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student features (same shapes as the teacher's) from the teacher's."""
        return self.decoder(self.ocbe(teacher))

    def loss(self, features: list[torch.Tensor]) -> torch.Tensor:
        student = self.forward_features(features)
        total = 0.0
        for t, s in zip(features, student):
            if self.config.loss == "flattened":
                total = total + (1 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()
            else:
                total = total + (1 - F.cosine_similarity(t, s, dim=1)).mean()
        return total

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> dict:
        """``teacher``/``student`` features, per-level ``level_maps`` (B, h, w) of 1 - cos, ``map`` (B, H, W)
        (upsampled, summed, smoothed) and ``scores`` (B,)."""
        teacher = self.extract(images)
        student = self.forward_features(teacher)
        level_maps = [1 - F.cosine_similarity(t, s, dim=1) for t, s in zip(teacher, student)]
        up = [F.interpolate(m[:, None], size=self.image_hw, mode="bilinear", align_corners=self.config.align_corners)[:, 0]
              for m in level_maps]
        amap = gaussian_blur(torch.stack(up).sum(dim=0), self.config.smoothing_sigma,
                             padding=self.config.smoothing_padding)
        scores = image_score(amap, self.config.score_rule, self.config.topk_ratio)
        return {"teacher": teacher, "student": student, "level_maps": level_maps, "map": amap, "scores": scores}

    def predict(self, images: torch.Tensor) -> Prediction:
        out = self.explain(images)
        return Prediction(out["map"], out["scores"])


def _default_layers(backbone: str) -> tuple[int, ...]:
    """Three CNN stages at strides 4, 8, 16 (timm feature_info indices 1-3), as RD4AD taps WideResNet-50."""
    from adlib import backbones

    spec = backbones.SPECS.get(backbone)
    if spec is not None and spec.kind != "cnn":
        raise ValueError(f"RD4AD mirrors a CNN teacher's stages; backbone {backbone!r} is a {spec.kind}: "
                         f"give a CNN backbone or explicit layers")
    return (1, 2, 3)


# ------------------------------------------------------------------------- the authors' checkpoints (official)
# hq-deng/RD4AD main.py saves {'bn': BN_layer.state_dict(), 'decoder': de_resnet.ResNet.state_dict()}; the
# teacher is torchvision's ImageNet Wide-ResNet-50-2 (timm's wide_resnet50_2.tv_in1k is that file), not saved.
# ``authors.unwrap`` reads the two parts as "bn.*" and "decoder.*"; a state dict that also holds the teacher
# under "encoder.*" (the parity fixture's reduced one) loads it too.

# The value that gives adlib's behaviour before the bug fix the parity check made (benchmarks/parity/faithfulness.py).
AUTHORS_FIXES = {"smoothing_padding": "reflect"}

_OCBE_FUSE = {"fuse.0.0.": "conv1.", "fuse.0.1.": "bn1.", "fuse.0.3.": "conv2.", "fuse.0.4.": "bn2.",
              "fuse.1.0.": "conv3.", "fuse.1.1.": "bn3."}


def _authors_key(ours: str) -> str | None:
    parts = ours.split(".")
    if ours.startswith("tokenizer.model."):
        return "encoder." + ours[len("tokenizer.model."):]
    if ours.startswith("ocbe.fuse."):
        rest = ours[len("ocbe."):]
        return next(("bn." + new + rest[len(old):] for old, new in _OCBE_FUSE.items() if rest.startswith(old)), None)
    if ours.startswith("ocbe.stage."):
        return "bn.bn_layer." + ".".join(parts[2:]).replace(".shortcut.", ".downsample.")
    if ours.startswith("decoder.stages."):
        return f"decoder.layer{int(parts[2]) + 1}." + ".".join(parts[3:]).replace(".shortcut.", ".upsample.")
    return None


def authors_key_map(config: RD4ADConfig) -> dict[str, str]:
    """adlib key -> the official key: OCBE <- ``bn.*`` (BN_layer), decoder <- ``decoder.layer1-3.*``, and the
    teacher <- ``encoder.*`` when it comes from the checkpoint (``pretrained=False``)."""
    from dataclasses import replace

    with torch.device("meta"):
        own = RD4AD(replace(config, pretrained=False)).state_dict()
    key_map = {ours: _authors_key(ours) for ours in own if not (config.pretrained and ours.startswith("tokenizer."))}
    unknown = [k for k, v in key_map.items() if v is None]
    if unknown:
        raise ValueError(f"adlib keys without an official counterpart: {unknown[:5]}")
    return key_map


def authors_ignored(config: RD4ADConfig) -> set[str]:
    """Official keys adlib does not hold: BN_layer's ``conv4``/``bn4`` (built, never called in its forward) and,
    with a teacher in the checkpoint, its ``layer4`` and ``fc`` (the teacher is tapped at layer1-3)."""
    ignored = {"bn.conv4.weight"} | {f"bn.bn4.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                              "num_batches_tracked")}
    if not config.pretrained:
        import timm

        from adlib import backbones

        with torch.device("meta"):
            full = timm.create_model(backbones.SPECS[config.backbone].timm_id, pretrained=False,
                                     **(config.backbone_kwargs or {}))
        ignored |= {f"encoder.{k}" for k in full.state_dict() if k.startswith(("layer4.", "fc."))}
    return ignored


def authors_config(shapes, **config) -> RD4ADConfig:
    """Blocks, inner width ratio and teacher of an official checkpoint (Wide-ResNet-50-2 when the decoder's
    inner width is half its output, ResNet-50 when a quarter); ``pretrained=False`` when it holds the teacher."""
    from adlib.models import model_config

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})

    derived: dict[str, Any] = {"ocbe_blocks": count("bn.bn_layer."),
                               "decoder_blocks": tuple(count(f"decoder.layer{i}.") for i in (1, 2, 3))}
    if "decoder.layer1.0.conv3.weight" in shapes:
        derived["width_ratio"] = shapes["decoder.layer1.0.conv1.weight"][0] / shapes["decoder.layer1.0.conv3.weight"][0]
        derived["embedding_channels"] = shapes["bn.bn_layer.0.conv3.weight"][0]
        derived["backbone"] = "wide_resnet50" if derived["width_ratio"] == 0.5 else "resnet50"
    if "encoder.layer1.0.conv3.weight" in shapes:
        outs = tuple(shapes[f"encoder.layer{i}.0.conv3.weight"][0] for i in (1, 2, 3))
        derived["pretrained"] = False
        if outs != (256, 512, 1024):
            derived["backbone_kwargs"] = {"channels": tuple(c // 4 for c in outs) + (outs[-1] // 2,)}
    derived.update(config)
    return model_config("rd4ad", None, **derived)


def authors_stages(model: RD4AD, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher features, the OCBE embedding, the student features, the map and the image score."""
    out = model.explain(images)
    stages = {f"encoder_{i + 1}": f for i, f in enumerate(out["teacher"])}
    stages["bottleneck"] = model.ocbe(out["teacher"])
    stages.update({f"decoder_{i + 1}": f for i, f in enumerate(out["student"])})
    stages["map"], stages["score"] = out["map"], out["scores"]
    stages["loss"] = model.loss(out["teacher"]).reshape(1)  # main.py's loss_fucntion, eval mode
    return stages
