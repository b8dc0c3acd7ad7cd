"""CSR inference export: same outputs as the masked model, structure from the masks, a CLI for runs."""

from __future__ import annotations

import json

import pytest
import torch

from sparseforge.models import create_model
from sparseforge.sparsity import Sparsifier
from sparseforge.sparsity.backends.export import CSRLinear, export_csr, main
from sparseforge.train import train
from tests.helpers.config import compose_config
from tests.helpers.engine import train_on_noise


def trained(backend: str):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_chans=1, image_size=8, hidden_sizes=[64, 32])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = Sparsifier(model, optimizer, density=0.2, update_rule="rigl", delta_t=3, total_steps=20, backend=backend)
    train_on_noise(model, optimizer, sp, 7, (1, 8, 8))
    assert sp.updates_done == 2
    return model, sp


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_export_matches_the_masked_model_and_leaves_it_alone(backend, tmp_path):
    model, sp = trained(backend)
    masks = {n: sp.masks[n] for n in sp.masks}
    x = torch.randn(64, 1, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exported, report = export_csr(model, masks, x)
    assert report["max_abs_diff"] <= 1e-5
    assert all(v.startswith("csr") for v in report["layers"].values())
    assert isinstance(exported.features[1], CSRLinear) and isinstance(exported.fc, CSRLinear)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.eval()
    torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-6)
    torch.save(exported, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    torch.testing.assert_close(loaded(x), exported(x))


def test_the_csr_structure_comes_from_the_mask_not_from_nonzero_values():
    model, sp = trained("masked")
    name = "features.1"
    mask = sp.masks[name]
    layer = model.get_submodule(name)
    with torch.no_grad():  # an active weight at exactly 0, as a grown one starts
        layer.weight[mask.nonzero()[0].tolist()[0], mask.nonzero()[0].tolist()[1]] = 0.0
    exported, _ = export_csr(model, {n: sp.masks[n] for n in sp.masks}, torch.randn(4, 1, 8, 8))
    assert exported.get_submodule(name).values.numel() == int(mask.sum())


def test_a_wrong_export_is_refused():
    model, sp = trained("masked")
    masks = {n: sp.masks[n] for n in sp.masks}
    wrong = dict(masks)
    wrong["features.1"] = torch.zeros_like(masks["features.1"])  # drops every active weight
    with pytest.raises(RuntimeError, match="CSR export differs from the masked model"):
        export_csr(model, wrong, torch.randn(8, 1, 8, 8))


def test_sparseforge_export_cli_on_a_finished_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(compose_config(["logger=none", "debug=fdr", "sparsity.backend=csr"], output_dir=run_dir))
    main([str(run_dir), "--batch", "8"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["max_abs_diff"] <= 1e-5 and (run_dir / "csr_export.pt").exists()
    assert set(report["layers"]) == set(json.loads((run_dir / "summary.json").read_text())["sparsity"]["layers"])
