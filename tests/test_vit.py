"""ViT: parity with transformers on tiny random models in every key layout, position-embedding
interpolation, preprocessing parity with transformers' image processor, and `zoo run`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

PIL = pytest.importorskip("PIL")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402
from transformers import ViTConfig, ViTForImageClassification, ViTForMaskedImageModeling, ViTModel  # noqa: E402

import zoo  # noqa: E402
from zoo.checkpoint import save_safetensors  # noqa: E402
from zoo.converters import hf_vit  # noqa: E402
from zoo.errors import ConfigError, ConversionError, InputError  # noqa: E402
from zoo.imaging import preprocess, resolve_settings  # noqa: E402
from zoo.loading import load_full  # noqa: E402
from zoo.registry import get_catalog  # noqa: E402
from zoo.tasks import RunOptions, get_runner  # noqa: E402

TOL = 1e-5  # float32, CPU

CONFIGS = {
    # square 4x4 patch grid, 5 named labels
    "base": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 image_size=32, patch_size=8, id2label={i: f"class{i}" for i in range(5)}),
    # 6x6 grid, no q/k/v bias, tanh GELU, another LayerNorm eps
    "variant": dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=3, intermediate_size=48,
                    image_size=24, patch_size=4, qkv_bias=False, hidden_act="gelu_new", layer_norm_eps=1e-6,
                    num_labels=3),
}
# (kind, transformers class, zoo task)
KINDS = {
    "classifier": "image-classification",
    "encoder_pooler": "image-feature-extraction",
    "encoder_nopooler": "image-feature-extraction",
}


def make_reference(config_name: str, kind: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ViTConfig(**CONFIGS[config_name])
    if kind == "classifier":
        model = ViTForImageClassification(cfg)
    else:
        model = ViTModel(cfg, add_pooling_layer=kind == "encoder_pooler")
    # random init leaves LayerNorms at 1/0 and biases at 0: perturb everything so a swapped or
    # dropped tensor cannot go unnoticed
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def write_checkpoint(model, folder: Path, layout: str) -> Path:
    """Write ``model`` in one key layout: 'save_pretrained' (what transformers 5.x writes),
    'hub' (hub_layout() of the state dict, as the files on the Hub), 'state_dict' (transformers
    5.x module names written as is)."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "save_pretrained":
        model.save_pretrained(folder)
        return folder
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if layout == "hub":
        state = hf_vit.hub_layout(state, model.config.to_dict())
    save_safetensors(state, folder / "model.safetensors")
    model.config.architectures = [type(model).__name__]  # as save_pretrained records it
    model.config.to_json_file(folder / "config.json")
    return folder


def assert_close(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= TOL, f"{what}: max abs error {err:.3g} > {TOL}"


def compare(zoo_model, ref, pixel_values, kind):
    with torch.no_grad():
        ours = zoo_model(pixel_values, output_hidden_states=True)
        theirs = ref(pixel_values, interpolate_pos_encoding=True, output_hidden_states=True)
    if kind == "classifier":
        assert_close(ours.logits, theirs.logits, "logits")
        # without hidden states the last block computes the class token's row alone
        with torch.no_grad():
            assert_close(zoo_model(pixel_values).logits, theirs.logits, "logits (class token's row only)")
    else:
        assert_close(ours.last_hidden_state, theirs.last_hidden_state, "last_hidden_state")
        if kind == "encoder_pooler":
            assert_close(ours.pooler_output, theirs.pooler_output, "pooler_output")
        else:
            assert ours.pooler_output is None and theirs.pooler_output is None
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert_close(a, b, f"hidden_states[{i}]")


@pytest.mark.parametrize("layout", ["save_pretrained", "hub", "state_dict"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_parity_every_layout_and_resolution(tmp_path, config_name, kind, layout):
    ref = make_reference(config_name, kind)
    folder = write_checkpoint(ref, tmp_path / "ckpt", layout)
    loaded = load_full(str(folder), device="cpu")
    assert loaded.task == KINDS[kind]
    assert hasattr(loaded.model, "pooler") == (kind == "encoder_pooler")
    if torch.backends.mkl.is_available():  # parity below runs through q|k|v packed as one product
        assert all(m._qkv is not None for m in loaded.model.modules() if hasattr(m, "_qkv"))
    size = CONFIGS[config_name]["image_size"]
    patch = CONFIGS[config_name]["patch_size"]
    gen = torch.Generator().manual_seed(1)
    # trained resolution, a larger square one (like 224 -> 384), and a non-square one
    for h, w in [(size, size), (size + 3 * patch, size + 3 * patch), (size, size + 5 * patch)]:
        compare(loaded.model, ref, torch.randn(2, 3, h, w, generator=gen), kind)


@pytest.mark.parametrize("layers", [1, 2])
def test_a_classifier_computes_the_class_token_alone_in_its_last_block(tmp_path, monkeypatch, layers):
    from zoo.accel import vit as fast_vit
    from zoo.plugins import vit as zoo_vit

    torch.manual_seed(0)
    ref = ViTForImageClassification(ViTConfig(**{**CONFIGS["base"], "num_hidden_layers": layers})).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = load_full(str(write_checkpoint(ref, tmp_path / "ckpt", "save_pretrained")), device="cpu").model
    calls = []  # (which path, output shape) per block; wrappers, not hooks (hooks take every row)
    plain, short = zoo_vit.Layer.forward, fast_vit.class_token_block

    def recording(block, x):
        out = plain(block, x)
        calls.append(("all rows", tuple(out.shape)))
        return out

    def recording_short(block, x):
        out = short(block, x)
        calls.append(("class token", tuple(out.shape)))
        return out

    monkeypatch.setattr(zoo_vit.Layer, "forward", recording)
    monkeypatch.setattr(fast_vit, "class_token_block", recording_short)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert_close(model(x).logits, ref(x).logits, "logits")
    assert calls == [("all rows", (3, 17, 32))] * (layers - 1) + [("class token", (3, 1, 32))]


def test_verify_names_the_class_token_path_when_only_it_is_wrong(tmp_path, monkeypatch):
    from zoo.accel import vit as fast_vit
    from zoo.verification import verify

    folder = write_checkpoint(make_reference("base", "classifier"), tmp_path / "ckpt", "save_pretrained")
    short = fast_vit.class_token_block
    # a bug on the shorter path only: the class token's features come out in reverse order
    monkeypatch.setattr(fast_vit, "class_token_block", lambda block, x: short(block, x).flip(-1))
    report = verify(str(folder), device="cpu")
    assert not report.passed
    assert "the difference is in the fast path vit-class-token-block;" in report.first_divergence


def test_a_hook_on_the_last_block_sees_every_row(tmp_path):
    # a classifier computes the class token alone in its last block, unless a hook may read the rest
    ref = make_reference("base", "classifier")
    model = load_full(str(write_checkpoint(ref, tmp_path / "ckpt", "save_pretrained")), device="cpu").model
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    seen = []
    handle = model.encoder.layer[-1].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            logits = model(x).logits
    finally:
        handle.remove()
    with torch.no_grad():
        assert_close(logits, ref(x).logits, "logits")
        assert_close(model(x).logits, logits, "logits without the hook")
    assert seen == [torch.Size([2, 17, 32])]  # 1 + 4 x 4 patches


@pytest.mark.parametrize("kind", list(KINDS))
def test_hub_layout_is_what_save_pretrained_writes(tmp_path, kind):
    """hub_layout() (used by verify on random weights) gives exactly the Hub/save_pretrained keys."""
    from safetensors import safe_open

    ref = make_reference("base", kind)
    ref.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert set(hf_vit.hub_layout(dict(ref.state_dict()), ref.config.to_dict())) == saved
    assert any(k.startswith("vit.encoder.layer.0.attention.attention.query") for k in saved) == (kind == "classifier")


def test_trained_resolution_needs_no_flag_and_false_refuses_others(tmp_path):
    ref = make_reference("base", "classifier")
    model = load_full(str(write_checkpoint(ref, tmp_path, "save_pretrained")), device="cpu").model
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert_close(model(x).logits, ref(x).logits, "logits without interpolate flag")
    with pytest.raises(InputError, match="interpolate_pos_encoding"):
        model(torch.randn(1, 3, 48, 48), interpolate_pos_encoding=False)


def test_masked_image_modeling_checkpoint_loads_as_encoder(tmp_path):
    torch.manual_seed(0)
    ref = ViTForMaskedImageModeling(ViTConfig(**{**CONFIGS["base"], "encoder_stride": 8})).eval()
    ref.save_pretrained(tmp_path)
    loaded = load_full(str(tmp_path), device="cpu")
    assert loaded.task == "image-feature-extraction"
    assert set(loaded.report.dropped.values()) >= {
        "mask token of masked image modeling (SimMIM); not used for inference"
    }
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert_close(loaded.model(x).last_hidden_state, ref.vit(x).last_hidden_state, "last_hidden_state")


def test_classifier_checkpoint_as_encoder_drops_head_by_rule(tmp_path):
    ref = make_reference("base", "classifier")
    folder = write_checkpoint(ref, tmp_path, "hub")
    loaded = load_full(str(folder), device="cpu", task="image-feature-extraction")
    assert loaded.report.dropped["classifier.weight"].startswith("classification head")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert_close(loaded.model(x).last_hidden_state, ref.vit(x).last_hidden_state, "last_hidden_state")


def test_reference_from_folder_matches_pooler_presence(tmp_path):
    for kind in ("encoder_pooler", "encoder_nopooler"):
        ref = make_reference("base", kind)
        folder = write_checkpoint(ref, tmp_path / kind, "save_pretrained")
        again = hf_vit.reference(ref.config.to_dict(), "image-feature-extraction", str(folder))
        assert (again.pooler is not None) == (kind == "encoder_pooler")


# ---------------------------------------------------------------- broken mappings are caught


def _swap_query_key(converter):
    swapped = []
    for m in converter.key_map:
        if ".attention.attention.query." in m.source:
            m = dataclasses.replace(m, source=m.source.replace(".query.", ".key."))
        elif ".attention.attention.key." in m.source:
            m = dataclasses.replace(m, source=m.source.replace(".key.", ".query."))
        swapped.append(m)
    return dataclasses.replace(converter, key_map=tuple(swapped))


def test_swapped_query_key_changes_outputs(tmp_path):
    ref = make_reference("base", "classifier")
    folder = write_checkpoint(ref, tmp_path, "hub")
    broken = load_full(str(folder), device="cpu", converter=_swap_query_key(hf_vit.CONVERTER)).model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        err = (broken(x).logits - ref(x).logits).abs().max().item()
    assert err > 1e-3, "a converter with query/key swapped still matched the reference"


def test_missing_key_raises_naming_it(tmp_path):
    ref = make_reference("base", "classifier")
    state = hf_vit.hub_layout(dict(ref.state_dict()), ref.config.to_dict())
    del state["vit.encoder.layer.1.layernorm_after.bias"]
    save_safetensors(state, tmp_path / "model.safetensors")
    ref.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(ConversionError, match=r"encoder\.layer\.1\.layernorm_after\.bias"):
        load_full(str(tmp_path), device="cpu")


# ---------------------------------------------------------------- config and input errors


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(hidden_act="mish"), "hidden_act"),
        (dict(pooler_act="mish"), "pooler_act"),
        (dict(hidden_size=30), "hidden_size"),
        (dict(patch_size=[8, 8, 8]), "patch_size"),
        (dict(image_size=4), "image_size"),
        (dict(head_dim=4), "head_dim"),
        (dict(use_mask_token=True), "use_mask_token"),
        (dict(use_absolute_position_embeddings=False), "use_absolute_position_embeddings"),
        (dict(num_labels=0, id2label=None), "num_labels"),
    ],
)
def test_unsupported_config_refused_by_name(override, field):
    """A config.json the architecture cannot build is refused naming the field: by the
    converter's translation (Hugging Face's switches) or by the architecture (its sizes)."""
    from zoo.plugins.vit import from_config

    with pytest.raises(ConfigError, match=field):
        from_config(hf_vit.to_architecture({**CONFIGS["base"], **override}), "image-classification")


@pytest.mark.parametrize("config, expected", [
    (dict(CONFIGS["variant"], image_size=[24, 40], patch_size=[4, 8], add_pooling_layer=False),
     dict(image_size=(24, 40), patch_size=(4, 8), num_classes=3, representation_size=None, qkv_bias=False)),
    (dict(CONFIGS["base"], pooler_output_size=20, pooler_act="relu"),
     dict(image_size=(32, 32), num_classes=5, representation_size=20, representation_activation="relu")),
    (dict(CONFIGS["base"]), dict(num_layers=2, num_heads=4, mlp_dim=37, representation_size=32)),
], ids=["non-square-no-pooler", "pooler-of-its-own-width", "pooler-default-width"])
def test_config_translation_inverts(config, expected):
    """config.json -> the architecture's names -> config.json fields -> the same names; the
    fields that come back are those written (a square size as config.json writes it)."""
    from zoo import testing

    arch = testing.check_config_translation(hf_vit.CONVERTER, config)
    assert {k: arch[k] for k in expected} == expected
    back = hf_vit.from_architecture(arch)
    assert {k: back[k] for k in config if k in back} == {k: v for k, v in config.items() if k in back}


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(3, 32, 32), "shape"),
        (torch.randn(1, 4, 32, 32), "channels"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.randn(1, 3, 4, 32), "smaller than one"),
    ],
)
def test_bad_pixel_values(tmp_path, bad, match):
    ref = make_reference("base", "classifier")
    model = load_full(str(write_checkpoint(ref, tmp_path, "hub")), device="cpu").model
    with pytest.raises(InputError, match=match):
        model(bad)


# ---------------------------------------------------------------- registry


def _vit_entries():
    return [e for e in get_catalog().list() if e.architecture == "vit"]


def test_registry_has_the_vit_family():
    names = {e.name for e in _vit_entries()}
    assert names == {"vit-base-patch16-224", "vit-large-patch16-224", "vit-base-patch16-384", "vit-base-patch32-224-in21k"}
    for e in _vit_entries():
        assert get_catalog().find(e.repo) is e  # the HF repo id is an alias
        assert e.preprocessing["size"]["height"] == e.config["image_size"]


@pytest.mark.parametrize("entry", _vit_entries(), ids=lambda e: e.name)
def test_registry_entry_builds_with_exact_params(entry):
    arch = get_catalog().architecture(entry.architecture)
    config = get_catalog().converter(entry.converter).architecture_config(entry.config)
    with torch.device("meta"):
        model = arch.build(config, entry.task)
    assert sum(p.numel() for p in model.parameters()) == entry.params
    assert hasattr(model, "classifier") == (entry.task == "image-classification")


# ---------------------------------------------------------------- preprocessing


def _photo(path: Path, size=(67, 45), mode="RGB", seed=0) -> Path:
    """A small image with smooth structure and noise (so resampling filters differ)."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2], dim=-1) * 200
    arr = (base + torch.rand(h, w, 3, generator=g) * 55).clamp(0, 255).to(torch.uint8).numpy()
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


PROCESSOR_SETTINGS = [
    dict(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2),
    dict(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3),
    dict(size={"height": 32, "width": 48}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=1),
]


@pytest.mark.parametrize("fmt", ["png", "jpg"])
@pytest.mark.parametrize("settings", PROCESSOR_SETTINGS, ids=["224-bilinear", "384-bicubic", "32x48-lanczos-imagenet"])
def test_preprocessing_matches_transformers(tmp_path, settings, fmt):
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    path = _photo(tmp_path / f"photo.{fmt}")
    processor = ViTImageProcessorPil(**settings)
    with Image.open(path) as im:
        expected = processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
    ours = preprocess([str(path)], resolve_settings(settings, {"image_size": 224}))
    assert ours.dtype == torch.float32
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= 1e-6


def test_preprocessing_refuses_unknown_settings():
    with pytest.raises(ConfigError, match="do_center_crop"):
        resolve_settings({"do_center_crop": True}, {})
    with pytest.raises(ConfigError, match="resample"):
        resolve_settings({"resample": "fancy"}, {})


# ---------------------------------------------------------------- zoo run


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def classifier_folder(tmp_path):
    ref = make_reference("base", "classifier")
    folder = write_checkpoint(ref, tmp_path / "vit", "save_pretrained")
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
         "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
         "image_processor_type": "ViTImageProcessor"}))
    return folder, ref


@pytest.mark.parametrize("as_json", [False, True])
def test_run_prints_top5_for_png_and_jpeg(tmp_path, classifier_folder, as_json):
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    folder, ref = classifier_folder
    images = [_photo(tmp_path / "a.png", mode="RGBA"), _photo(tmp_path / "b.jpg", size=(40, 90), seed=1)]
    before = [_digest(p) for p in images]
    loaded = load_full(str(folder), device="cpu")
    out = []
    result = get_runner(loaded.task)(loaded, [str(p) for p in images], RunOptions(json=as_json), out.append)
    assert [_digest(p) for p in images] == before  # inputs untouched
    assert len(result["results"]) == 2
    processor = ViTImageProcessorPil.from_pretrained(str(folder))
    for path, res in zip(images, result["results"]):
        assert len(res["top"]) == 5
        with Image.open(path) as im:
            pv = processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            probs = ref(pv).logits.softmax(-1)[0]
        p, idx = probs.topk(5)
        assert [t["label"] for t in res["top"]] == [f"class{i}" for i in idx.tolist()]
        assert max(abs(t["probability"] - q) for t, q in zip(res["top"], p.tolist())) < 1e-5
    text = "".join(out)
    if as_json:
        assert text == ""
        json.dumps(result)  # serializable for --json
    else:
        assert text.count("%") == 10 and "class" in text


def test_run_rejects_non_image_and_missing_files(tmp_path, classifier_folder):
    folder, _ = classifier_folder
    loaded = load_full(str(folder), device="cpu")
    run = get_runner(loaded.task)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    with pytest.raises(InputError, match="not an image"):
        run(loaded, [str(notes)], RunOptions(), lambda s: None)
    with pytest.raises(InputError, match="no such image"):
        run(loaded, [str(tmp_path / "missing.png")], RunOptions(), lambda s: None)
    with pytest.raises(InputError, match="image files"):
        run(loaded, [], RunOptions(), lambda s: None)


def test_registry_name_with_local_checkpoint_uses_entry_preprocessing(tmp_path):
    """zoo.load("vit-base-patch16-224", checkpoint=...) gives the classifier; without a
    preprocessor_config.json the entry's table applies (224x224, so positions interpolate)."""
    ref = make_reference("base", "classifier")
    folder = write_checkpoint(ref, tmp_path / "ckpt", "hub")
    model = zoo.load("google/vit-base-patch16-224", checkpoint=str(folder), device="cpu")
    # the folder's id2label (5 labels) replaces the entry's num_labels = 1000 as a whole
    assert model.classifier.out_features == ref.config.num_labels == 5
    loaded = load_full("vit-base-patch16-224", checkpoint=str(folder), device="cpu")
    image = _photo(tmp_path / "c.png")
    result = get_runner(loaded.task)(loaded, [str(image)], RunOptions(top=3), lambda s: None)
    assert result["preprocessing"]["height"] == 224 and len(result["results"][0]["top"]) == 3


def test_label_names_fall_back_to_label_i():
    from zoo.tasks.image_classification import label_names

    assert label_names({"num_labels": 3}, 3) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert label_names({"id2label": {"0": "cat", "1": "dog"}}, 2) == ["cat", "dog"]


def test_run_feature_extraction(tmp_path):
    ref = make_reference("base", "encoder_pooler")
    folder = write_checkpoint(ref, tmp_path / "enc", "save_pretrained")
    loaded = load_full(str(folder), device="cpu")
    image = _photo(tmp_path / "d.jpg")
    result = get_runner(loaded.task)(loaded, [str(image)], RunOptions(), lambda s: None)
    assert result["embedding"] == "pooler_output"
    assert len(result["results"][0]["embedding"]) == 32


def test_zoo_processor_gives_the_checkpoints_image_processor(classifier_folder, tmp_path):
    """zoo.processor: transformers' own image processor from the folder zoo.load reads; its
    pixel values are what zoo's preprocessing computes for the same image."""
    from PIL import Image

    from zoo.errors import InputError
    from zoo.imaging import preprocess, settings_for

    classifier_folder, _ = classifier_folder
    image = tmp_path / "x.png"
    Image.linear_gradient("L").convert("RGB").resize((40, 30)).save(image)
    proc = zoo.processor(str(classifier_folder))
    theirs = proc(images=Image.open(image), return_tensors="pt")["pixel_values"]
    loaded = load_full(str(classifier_folder), device="cpu")
    ours = preprocess([str(image)], settings_for(loaded))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    (classifier_folder / "preprocessor_config.json").unlink()
    with pytest.raises(InputError, match="no tokenizer or preprocessing files"):
        zoo.processor(str(classifier_folder))
