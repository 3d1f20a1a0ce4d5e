"""Models over the registry (shapes, backward, no NaN, parameter counts), text tower, external weights."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from silverclip.findings import FINDINGS
from silverclip.models import create_model, list_models
from silverclip.models.external_weights import load_external_weights
from silverclip.models.text import offline_text_model_path

torch.set_num_threads(1)

TINY_BERT = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
TINY_CLIP = {"image": {"name": "resnet10_3d"}, "text": {"config": TINY_BERT}, "embed_dim": 16}
# Tiny settings per registered model; a new model must be added here (test_every_model_has_test_settings).
TEST_KW: dict[str, dict] = {
    "resnet10_3d": {},
    "resnet18_3d": {},
    "resnet34_3d": {},
    "resnet50_3d": {},
    "hf_text": {"config": TINY_BERT},
    "clip": TINY_CLIP,
    "clip_authors": TINY_CLIP,
}
IMAGE_MODELS = [n for n in TEST_KW if n.startswith("resnet")]
TEXTS = ["No pleural effusion.", "Bilateral emphysema and a small nodule in the right upper lobe."]


def _volume(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 1, size, size, size, generator=torch.Generator().manual_seed(0))


def _assert_all_grads(model: torch.nn.Module) -> None:
    """Every trainable parameter got a finite gradient: nothing unused (DDP needs no find_unused_parameters)."""
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} received no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def test_every_model_has_test_settings() -> None:
    assert set(list_models()) == set(TEST_KW)


def test_unknown_model_names_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="resnet18_3d"):
        create_model("resnet18")


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_model_shapes_backward(name: str) -> None:
    model = create_model(name, **TEST_KW[name])
    x = _volume()
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)
    logits = model.forward_head(feats)
    assert logits.shape == (2, len(FINDINGS))
    assert torch.isfinite(logits).all()
    model(x).square().mean().backward()
    _assert_all_grads(model)
    assert model.model_config == {"name": name}
    assert create_model(**model.model_config).num_features == model.num_features


@pytest.mark.parametrize("name", ["hf_text"])
def test_text_model_shapes_backward(name: str) -> None:
    model = create_model(name, **TEST_KW[name])
    tokens = model.tokenize(TEXTS)
    assert tokens["input_ids"].shape[0] == 2
    out = model(**tokens)
    assert out.shape == (2, model.num_features) == (2, 64)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    _assert_all_grads(model)


@pytest.mark.parametrize("name", ["clip", "clip_authors"])
def test_clip_models(name: str) -> None:
    model = create_model(name, **TEST_KW[name])
    out = model(_volume(), model.tokenize(TEXTS))
    assert out["image_embeds"].shape == out["text_embeds"].shape == (2, 16)
    assert all(torch.isfinite(v).all() for v in out.values())
    norms = out["image_embeds"].norm(dim=-1)
    if name == "clip":
        torch.testing.assert_close(norms, torch.ones(2))
        torch.testing.assert_close(out["logit_scale"], torch.tensor(1 / 0.07))
        assert isinstance(model.logit_scale, torch.nn.Parameter)
    else:
        assert not torch.allclose(norms, torch.ones(2))
        assert float(out["logit_scale"]) == 1.0
        assert "logit_scale" not in dict(model.named_parameters())
    from silverclip.losses import ClipLoss

    ClipLoss()(out["image_embeds"], out["text_embeds"], out["logit_scale"]).backward()
    _assert_all_grads(model)
    # The image tower is the supervised class, headless.
    assert type(model.image_tower).__name__ == "ResNet3d"
    assert isinstance(model.image_tower.fc, torch.nn.Identity)


def test_logit_scale_is_clamped_at_100() -> None:
    model = create_model("clip", **TINY_CLIP, init_temperature=0.001)
    assert float(model.get_logit_scale().detach()) == 100.0


def _resnet18_body_params(in_channels: int, stem: tuple[int, int, int]) -> int:
    """A standard ResNet-18 (basic blocks, BN, 1x1x1 bias-free projection shortcuts) counted from layer shapes."""
    k3 = 27
    total = 64 * in_channels * stem[0] * stem[1] * stem[2] + 2 * 64  # stem conv + BN
    in_planes = 64
    for planes in (64, 128, 256, 512):
        for block in range(2):
            cin = in_planes if block == 0 else planes
            total += planes * cin * k3 + planes * planes * k3 + 4 * planes  # two convs + two BNs
            if block == 0 and cin != planes:
                total += planes * cin + 2 * planes  # projection shortcut + its BN
        in_planes = planes
    return total


def test_resnet18_parameter_count_is_standard() -> None:
    model = create_model("resnet18_3d")
    body = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))
    assert body == _resnet18_body_params(1, (7, 7, 7)) == 33_160_000  # MedicalNet ResNet-18 body
    assert sum(p.numel() for p in model.parameters()) == 33_160_000 + 512 * 18 + 18
    # torchvision's r3d_18 (3x7x7 RGB stem, 400 Kinetics classes) publishes 33,371,472 parameters.
    r3d = create_model("resnet18_3d", in_channels=3, conv1_t_size=(7, 7, 3), num_classes=400)
    assert sum(p.numel() for p in r3d.parameters()) == _resnet18_body_params(3, (7, 7, 3)) + 400 * 513 == 33_371_472


def _monai_resnet(block: str, layers: list[int], **kw):
    """The MONAI ``ResNet`` our ``ResNet3d`` used to subclass, configured as it was (stem stride 2, no bias)."""
    nets = pytest.importorskip("monai.networks.nets")
    return nets.ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=3,
        conv1_t_stride=2,
        feed_forward=False,
        bias_downsample=False,
        **kw,
    )


@pytest.mark.parametrize(
    ("name", "block", "layers", "kw"),
    [
        ("resnet10_3d", "basic", [1, 1, 1, 1], {"widen_factor": 0.25}),
        ("resnet18_3d", "basic", [2, 2, 2, 2], {"widen_factor": 0.25, "conv1_t_size": (7, 7, 3)}),
        ("resnet34_3d", "basic", [3, 4, 6, 3], {"widen_factor": 0.125, "shortcut_type": "A"}),
        ("resnet50_3d", "bottleneck", [3, 4, 6, 3], {"widen_factor": 0.125}),
    ],
)
def test_same_weights_format_and_outputs_as_monai(name: str, block: str, layers: list[int], kw: dict) -> None:
    """Checkpoints written when ResNet3d subclassed MONAI's ResNet load key by key and compute the same."""
    ours = create_model(name, num_classes=0, **kw).eval()
    theirs = _monai_resnet(block, layers, n_input_channels=1, **kw).eval()
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(ref)
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    torch.manual_seed(1)
    with torch.no_grad():
        for v in ref.values():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) * 0.2 + 0.9 if v.ndim == 1 else v)
    ours.load_state_dict(ref, strict=True)
    x = _volume(size=24)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), theirs(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("norm", "cls"), [("instance", "InstanceNorm3d"), (("group", {"num_groups": 4}), "GroupNorm")])
def test_norm_applies_to_every_layer(norm, cls: str) -> None:
    model = create_model("resnet10_3d", norm=norm, widen_factor=0.25)
    norms = [type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__]
    assert len(norms) == 1 + 4 * 2 + 3 and set(norms) == {cls}  # stem, 2 per block, 3 projection shortcuts
    assert not any("running_mean" in k for k in model.state_dict())
    model(_volume(size=64)).square().mean().backward()  # instance norm needs > 1 voxel after layer4
    _assert_all_grads(model)
    assert create_model("resnet10_3d", norm="group", widen_factor=0.25).layer1[0].bn1.num_groups == 16  # 16 channels
    with pytest.raises(ValueError, match="unknown norm"):
        create_model("resnet10_3d", norm="layer")


def test_first_layer_downsamples() -> None:
    model = create_model("resnet18_3d")
    assert model.conv1.stride == (2, 2, 2) and not model.no_max_pool
    x = torch.zeros(1, 1, 32, 48, 64)
    stem = model.maxpool(model.act(model.bn1(model.conv1(x))))
    assert stem.shape[2:] == (8, 12, 16)


def test_zero_padding_shortcut_passes_gradients() -> None:
    # With the residual branch of layer2.0 silenced, only its shortcut connects the input to the output.
    model = create_model("resnet10_3d", shortcut_type="A")
    assert not any("downsample" in k for k in model.state_dict())
    with torch.no_grad():
        model.layer2[0].bn2.weight.zero_()
        model.layer2[0].bn2.bias.zero_()
    x = _volume().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_headless_and_reset_classifier() -> None:
    model = create_model("resnet10_3d", num_classes=0).eval()
    x = _volume(1)
    torch.testing.assert_close(model(x), model.forward_features(x))
    model.reset_classifier(5)
    assert model(x).shape == (1, 5)


def test_channels_last_gives_same_output() -> None:
    model = create_model("resnet10_3d").eval()
    x = _volume()
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        out = model_cl(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- text
def test_offline_text_model_is_the_pretrained_minilm() -> None:
    model = create_model("hf_text", name_or_path="offline")
    assert model.num_features == 384 and model.max_length == 128
    ref = load_file(str(offline_text_model_path() / "model.safetensors"))
    torch.testing.assert_close(model.model.embeddings.word_embeddings.weight, ref["embeddings.word_embeddings.weight"])
    model.eval()
    with torch.no_grad():
        emb = model(**model.tokenize(TEXTS + [TEXTS[0]]))
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb[0], emb[2])
    assert not torch.allclose(emb[0], emb[1])
    long = model.tokenize(["word " * 500])
    assert long["input_ids"].shape[1] == 128


def _fake_cxr_bert(folder: Path) -> Path:
    """A local folder laid out like microsoft/BiomedVLP-CXR-BERT-specialized: custom ``cxr-bert`` model
    type with ``auto_map`` to remote code, BERT masked-LM weights (``bert.*``), a BERT tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(offline_text_model_path())
    torch.manual_seed(1)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), **TINY_BERT)).save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(
        model_type="cxr-bert",
        architectures=["CXRBertModel"],
        auto_map={"AutoConfig": "configuration_cxrbert.CXRBertConfig", "AutoModel": "modeling_cxrbert.CXRBertModel"},
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_custom_model_type_without_remote_code_loads_the_base_bert(tmp_path: Path) -> None:
    folder = _fake_cxr_bert(tmp_path / "cxr")
    weights = load_file(str(folder / "model.safetensors"))
    model = create_model("hf_text", name_or_path=str(folder))
    assert type(model.model).__name__ == "BertModel"
    torch.testing.assert_close(
        model.model.encoder.layer[1].output.dense.weight, weights["bert.encoder.layer.1.output.dense.weight"]
    )
    assert model(**model.tokenize(TEXTS)).shape == (2, 64)
    assert not any("pooler" in k for k in model.state_dict())


# -------------------------------------------------------------------------------- external weights
def _medicalnet_state(model: torch.nn.Module) -> dict:
    """MedicalNet's checkpoint layout: {"state_dict": {"module.<key>"...}, ...} plus a segmentation head."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["module.conv_seg.0.weight"] = torch.randn(32, 512, 3, 3, 3)
    return {"epoch": 3, "state_dict": state}


def test_medicalnet_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("resnet18_3d", shortcut_type="A")  # MedicalNet ResNet-18 uses shortcut A
    path = tmp_path / "resnet_18.pth"
    torch.save(_medicalnet_state(source), path)

    target = create_model("resnet18_3d", shortcut_type="A")
    report = load_external_weights(target, path)  # auto-detected
    assert report.source == "medicalnet"
    assert report.unexpected == ["module.conv_seg.0.weight"]
    assert sorted(report.missing) == ["fc.bias", "fc.weight"] and not report.mismatched
    torch.testing.assert_close(target.layer3[1].conv2.weight, source.layer3[1].conv2.weight)

    default = create_model("resnet18_3d")  # projection shortcuts: MedicalNet has none, they stay initialised
    report = load_external_weights(default, path, source="medicalnet", verbose=False)
    assert "layer2.0.downsample.0.weight" in report.missing
    assert "missing:    layer2.0.downsample.0.weight" in report.summary()


def _r3d18_state() -> dict[str, torch.Tensor]:
    """torchvision.models.video.r3d_18's state-dict layout (shapes from its BasicBlock/BasicStem)."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        state.update(
            {
                f"{prefix}.weight": torch.rand(c, generator=g),
                f"{prefix}.bias": torch.rand(c, generator=g),
                f"{prefix}.running_mean": torch.rand(c, generator=g),
                f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5,
                f"{prefix}.num_batches_tracked": torch.tensor(7),
            }
        )

    state["stem.0.weight"] = torch.randn(64, 3, 3, 7, 7, generator=g)
    bn("stem.1", 64)
    in_planes = 64
    for i, planes in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            cin = in_planes if b == 0 else planes
            p = f"layer{i}.{b}"
            state[f"{p}.conv1.0.weight"] = torch.randn(planes, cin, 3, 3, 3, generator=g)
            bn(f"{p}.conv1.1", planes)
            state[f"{p}.conv2.0.weight"] = torch.randn(planes, planes, 3, 3, 3, generator=g)
            bn(f"{p}.conv2.1", planes)
            if b == 0 and i > 1:
                state[f"{p}.downsample.0.weight"] = torch.randn(planes, cin, 1, 1, 1, generator=g)
                bn(f"{p}.downsample.1", planes)
        in_planes = planes
    state["fc.weight"] = torch.randn(400, 512, generator=g)
    state["fc.bias"] = torch.randn(400, generator=g)
    return state


def test_torchvision_r3d_weights(tmp_path: Path) -> None:
    state = _r3d18_state()
    path = tmp_path / "r3d_18.safetensors"
    save_file(state, str(path))

    model = create_model("resnet18_3d", conv1_t_size=(7, 7, 3), conv1_t_stride=(2, 2, 1))
    report = load_external_weights(model, path, verbose=False)
    assert report.source == "torchvision_r3d"
    assert sorted(report.mismatched) == [("fc.bias", (400,), (18,)), ("fc.weight", (400, 512), (18, 512))]
    assert report.missing == [] and report.unexpected == []
    stem = state["stem.0.weight"].mean(dim=1, keepdim=True).permute(0, 1, 3, 4, 2)
    torch.testing.assert_close(model.conv1.weight, stem)
    torch.testing.assert_close(model.layer2[0].bn1.running_var, state["layer2.0.conv1.1.running_var"])
    torch.testing.assert_close(model.layer4[1].conv2.weight, state["layer4.1.conv2.0.weight"].permute(0, 1, 3, 4, 2))
    torch.testing.assert_close(model.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])
    assert any("mean over 3 input channels" in a for a in report.adapted)

    default = create_model("resnet18_3d")  # 7x7x7 stem: reported, not loaded
    report = load_external_weights(default, path, source="torchvision_r3d", verbose=False)
    assert ("stem.0.weight", (64, 1, 7, 7, 3), (64, 1, 7, 7, 7)) in report.mismatched
    assert len(report.loaded) == len(default.state_dict()) - 3  # all but stem conv and the 400-class head


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_external_weights_never_unpickle(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"conv1.weight": Path("/")}}, f)
    with pytest.raises(ValueError, match="evil.pth"):
        load_external_weights(create_model("resnet10_3d"), path)
    with pytest.raises(FileNotFoundError):
        load_external_weights(create_model("resnet10_3d"), tmp_path / "absent.pth")


def test_weights_kwarg_loads_at_creation(tmp_path: Path) -> None:
    source = create_model("resnet10_3d")
    path = tmp_path / "ours.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("resnet10_3d", weights=str(path))
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


# ---------------------------------------------------------------------------------------- precision
def test_bf16_autocast_on_cpu_and_auto_is_off() -> None:
    from silverclip import precision
    from silverclip.losses import ClipLoss

    with pytest.raises(ValueError, match="fp16"):
        precision.autocast("cpu", "fp16")
    with precision.autocast("cpu", "auto"):
        assert not torch.is_autocast_enabled("cpu")
    model = create_model("clip", **TINY_CLIP)
    tokens = model.tokenize(TEXTS)
    with precision.autocast_factory("bf16", "cpu")():
        assert torch.is_autocast_enabled("cpu")
        out = model(_volume(), tokens)
        assert out["image_embeds"].dtype == torch.bfloat16
        loss = ClipLoss()(out["image_embeds"], out["text_embeds"], out["logit_scale"])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    _assert_all_grads(model)
