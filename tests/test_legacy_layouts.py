"""Files of earlier versions of the point-cloud families: renamed config keys are read, weights of
the earlier network layout are refused with one clear line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from showerformer.errors import InputError
from showerformer.models.config import ModelConfig
from showerformer.models.panshower import PanShowerConfig
from showerformer.models.particle_cnn_transformer import ParticleCNNTransformerConfig
from showerformer.models.point_count_fm import PointCountFMConfig
from showerformer.models.point_flow import PointFlow, PointFlowConfig
from showerformer.training import checkpoint as ckpt

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# state-dict names of the conditioning before it became one ConditionEmbedding
OLD_NAMES = {
    "condition.time_features.freq": "time_features.freq",
    "condition.energy_features.freq": "energy_features.freq",
    "condition.particle_embed.weight": "particle_embed.weight",
}
OLD_SHOWER = {**OLD_NAMES, "condition.mlp.0.weight": "scalar_mlp.0.weight",
              "condition.mlp.0.bias": "scalar_mlp.0.bias", "condition.mlp.2.weight": "scalar_mlp.2.weight",
              "condition.mlp.2.bias": "scalar_mlp.2.bias"}
OLD_COUNTS = {**OLD_NAMES, "condition.mlp.0.weight": "cond_in.weight",
              "condition.mlp.0.bias": "cond_in.bias"}


def old_state_dict(model: PointFlow) -> dict[str, torch.Tensor]:
    """The model's tensors under the names the earlier layout used."""
    out = {}
    for name, value in model.state_dict().items():
        part, rest = name.split(".", 1)
        rest = (OLD_SHOWER if part == "shower" else OLD_COUNTS).get(rest, rest)
        out[f"{part}.{rest}"] = value.contiguous()
    return out


OLD_CONFIG = {"n_layers_calo": 5, "particles": [22, 11],
              "shower": {"d_model": 16, "n_heads": 2, "n_layers": 2},
              "counts": {"hidden": 8, "depth": 1}, "count_loss_weight": 0.5}
NEW_CONFIG = {"n_calo_layers": 5, "particles": [22, 11],
              "shower": {"d_model": 16, "n_heads": 2, "n_blocks": 2},
              "counts": {"d_model": 8, "n_blocks": 1}, "count_loss_weight": 0.5}


def test_legacy_keys_are_translated() -> None:
    assert PanShowerConfig.LEGACY_KEYS == {"n_layers_calo": "n_calo_layers", "n_layers": "n_blocks"}
    assert PointCountFMConfig.LEGACY_KEYS == {"n_layers_calo": "n_calo_layers",
                                              "hidden": "d_model", "depth": "n_blocks"}
    assert PointFlowConfig.LEGACY_KEYS == {"n_layers_calo": "n_calo_layers"}
    assert ModelConfig.LEGACY_KEYS == {}
    assert ParticleCNNTransformerConfig.LEGACY_KEYS == {"inter_layers": "inter_blocks"}
    pct = ParticleCNNTransformerConfig.from_dict({"inter_layers": 3, "grid": 32})
    assert pct.inter_blocks == 3 and "inter_layers" not in pct.to_dict()
    old = PanShowerConfig.from_dict({"n_layers_calo": 7, "n_layers": 3, "d_model": 16, "n_heads": 2})
    assert (old.n_calo_layers, old.n_blocks) == (7, 3)
    assert old == PanShowerConfig(n_calo_layers=7, n_blocks=3, d_model=16, n_heads=2)
    assert "n_layers" not in old.to_dict() and "n_blocks" in old.to_dict()
    counts = PointCountFMConfig.from_dict({"n_layers_calo": 7, "hidden": 24, "depth": 2})
    assert (counts.n_calo_layers, counts.d_model, counts.n_blocks) == (7, 24, 2)
    flow = PointFlowConfig.from_dict(OLD_CONFIG)
    assert flow == PointFlowConfig.from_dict(NEW_CONFIG)
    assert flow.to_dict() == {**NEW_CONFIG, "particles": [22, 11]}  # written with the new names
    assert flow.resolved_dict() == PointFlowConfig.from_dict(NEW_CONFIG).resolved_dict()


@pytest.mark.parametrize(("cls", "data", "key", "new"), [
    (PanShowerConfig, {"n_layers": 2, "n_blocks": 2}, "n_layers", "n_blocks"),
    (PanShowerConfig, {"n_layers_calo": 2, "n_calo_layers": 2}, "n_layers_calo", "n_calo_layers"),
    (PointCountFMConfig, {"hidden": 8, "d_model": 8}, "hidden", "d_model"),
    (PointCountFMConfig, {"depth": 1, "n_blocks": 1}, "depth", "n_blocks"),
    (PointFlowConfig, {"n_layers_calo": 4, "n_calo_layers": 4}, "n_layers_calo", "n_calo_layers"),
    (PointFlowConfig, {"shower": {"n_layers": 1, "n_blocks": 1}}, "shower.n_layers", "n_blocks"),
    (PointFlowConfig, {"counts": {"hidden": 8, "d_model": 8}}, "counts.hidden", "d_model"),
])
def test_old_and_new_name_together_is_an_error(cls: Any, data: dict[str, Any], key: str,
                                               new: str) -> None:
    with pytest.raises(InputError) as info:
        cls.from_dict(data)
    assert info.value.key == key
    assert f"both {key.split('.')[-1]} and {new}" in str(info.value)


def test_shared_keys_inside_a_section_are_refused_under_either_name() -> None:
    for name in ("n_calo_layers", "n_layers_calo"):
        with pytest.raises(InputError) as info:
            PointFlowConfig.from_dict({"counts": {name: 3}})
        assert info.value.key == f"counts.{name}" and "top level" in str(info.value)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("point_flow_*.yaml")), ids=lambda p: p.stem)
def test_yaml_configs_use_the_new_names_and_old_copies_still_load(path: Path) -> None:
    model = yaml.safe_load(path.read_text())["model"]
    model.pop("family")
    new = PointFlowConfig.from_dict(model)
    old_names = {"n_blocks": "n_layers"}
    old = dict(model, shower={old_names.get(k, k): v for k, v in model["shower"].items()},
               counts={{"d_model": "hidden", "n_blocks": "depth"}.get(k, k): v
                       for k, v in model["counts"].items()})
    assert "n_layers" in old["shower"] and "hidden" in old["counts"]
    assert PointFlowConfig.from_dict(old).resolved_dict() == new.resolved_dict()


def test_checkpoint_of_the_earlier_layout_is_refused_in_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PointFlow(PointFlowConfig.from_dict(NEW_CONFIG))
    info = {"family": "point-flow", "model_config": OLD_CONFIG, "state": {"step": 1}}
    folder = ckpt.save_checkpoint(tmp_path / "checkpoints", 1, model=model, info=info)
    loaded, _ = ckpt.load_checkpoint(folder)  # today's layout under the old config names
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    from safetensors.torch import save_file

    save_file(old_state_dict(model), str(folder / ckpt.MODEL_FILE))  # the earlier layout
    assert json.loads((folder / ckpt.CHECKPOINT_JSON).read_text())["model_config"] == OLD_CONFIG
    with pytest.raises(InputError) as exc:
        ckpt.load_checkpoint(folder)
    msg = str(exc.value)
    assert "\n" not in msg and str(folder / ckpt.MODEL_FILE) in msg
    assert "older layout of the 'point-flow' family and must be retrained" in msg
    assert "shower.condition.mlp.0.weight" in msg or "counts.condition" in msg
    # a tensor of the right name but another shape is still reported as a mismatch
    state = model.state_dict()
    state["counts.out.bias"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / ckpt.MODEL_FILE))
    with pytest.raises(InputError, match="weights do not match the model") as exc:
        ckpt.load_checkpoint(folder)
    assert "older layout" not in str(exc.value)
