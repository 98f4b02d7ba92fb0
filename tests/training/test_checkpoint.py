import json

import pytest
import torch
from torch import nn

from tests.training.conftest import TinyNet, train_hparams
from tuner.training import checkpoint as ckpt
from tuner.training import loop


def test_round_trip_weights_optimizer_state(tmp_path, tiny_model, separable_data):
    images, labels = separable_data
    hp = train_hparams()
    opt = loop.make_optimizer(tiny_model, hp)
    sched = loop.make_scheduler(opt, hp, steps_per_epoch=6, max_epochs=2)
    loop.train_one_epoch(tiny_model, images, labels, optimizer=opt, scheduler=sched, hp=hp,
                         device=torch.device("cpu"), img_size=16,
                         generator=torch.Generator(), aug_generator=torch.Generator())
    config = {"family": "tiny", "img_size": 16, "class_names": ["a", "b", "c"], "model": {}}
    ckpt.save_checkpoint(tmp_path, model=tiny_model, config=config, optimizer=opt,
                         state={"epoch": 1, "best": 0.5})
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.safetensors", "config.json", "optimizer.safetensors", "optimizer.json", "state.json"}
    fresh = TinyNet()
    ckpt.restore_weights(fresh, tmp_path)
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    opt2 = loop.make_optimizer(fresh, hp)
    assert ckpt.load_optimizer(opt2, tmp_path)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    assert torch.equal(s1[0]["exp_avg"], s2[0]["exp_avg"])
    assert ckpt.read_state(tmp_path) == {"epoch": 1, "best": 0.5}
    assert ckpt.read_config(tmp_path) == config


def test_shared_tensors_are_stored_once_and_restored(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model = Tied()
    ckpt.save_checkpoint(tmp_path, model=model, config={})
    fresh = Tied()
    ckpt.restore_weights(fresh, tmp_path)
    assert torch.equal(fresh.b.weight, model.a.weight)


def test_missing_checkpoint_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ckpt.restore_weights(TinyNet(), tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ckpt.read_config(tmp_path)


def test_checkpoint_holds_no_pickle(tmp_path, tiny_model):
    ckpt.save_checkpoint(tmp_path, model=tiny_model, config={"family": "tiny"})
    header_len = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8:8 + header_len])
    assert "conv.weight" in header
