"""The CIFAR ResNets: sizes, option-A structure, init, and which parameters each freeze mode trains."""

import pytest
import torch
import torch.nn as nn

import resnet
from resnet import build_model, count_parameters, freeze, select_parameters


@pytest.mark.parametrize("arch, total, bn, bn_fc", [
    ("resnet20", 269_722, 1_376, 2_026),
    ("resnet32", 464_154, 2_272, 2_922),
    ("resnet56", 853_018, 4_064, 4_714),
])
def test_parameter_counts(arch, total, bn, bn_fc):
    model = build_model(arch)
    assert count_parameters(model) == total
    assert count_parameters(model, "bn") == bn
    assert count_parameters(model, "bn+fc") == bn_fc
    assert count_parameters(model, "fc") == bn_fc - bn


def test_constructors_width_and_classes():
    model = resnet.resnet32(num_classes=100, width=2)
    assert model.conv1.out_channels == 32 and model.layer3[0].conv1.out_channels == 128
    assert model.linear.out_features == 100
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_option_a_shortcut_has_no_parameters_and_pads_channels():
    model = build_model("resnet20")
    block = model.layer2[0]
    assert isinstance(block.shortcut, resnet.PadShortcut)
    assert list(block.shortcut.parameters()) == []
    x = torch.randn(1, 16, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # the input, subsampled, in the middle channels
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0
    assert all(isinstance(b.shortcut, nn.Identity) for b in model.layer1)


def test_state_dict_in_forward_order():
    keys = list(build_model("resnet20").state_dict())
    assert keys[0] == "conv1.weight" and keys[1] == "bn1.weight" and keys[-1] == "linear.bias"
    first_index = {name: min(i for i, k in enumerate(keys) if k.startswith(name + "."))
                   for name in ("bn1", "layer1", "layer2", "layer3", "linear")}
    assert list(first_index.values()) == sorted(first_index.values())


def test_bn_init():
    torch.manual_seed(0)
    uniform = build_model("resnet20", bn_init="uniform")
    gammas = torch.cat([m.weight for m in uniform.modules() if isinstance(m, nn.BatchNorm2d)])
    betas = torch.cat([m.bias for m in uniform.modules() if isinstance(m, nn.BatchNorm2d)])
    assert gammas.min() >= 0 and gammas.max() < 1 and gammas.std() > 0.2  # spread over [0, 1)
    assert betas.abs().sum() == 0
    ones = build_model("resnet20", bn_init="ones")
    assert all(torch.all(m.weight == 1) for m in ones.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError):
        build_model("resnet20", bn_init="bogus")


EXPECTED_TRAINABLE = {  # mode -> predicate on (module, parameter name)
    "all": lambda m: True,
    "bn": lambda m: isinstance(m, nn.BatchNorm2d),
    "bn+fc": lambda m: isinstance(m, (nn.BatchNorm2d, nn.Linear)),
    "fc": lambda m: isinstance(m, nn.Linear),
    "none": lambda m: False,
}


@pytest.mark.parametrize("mode", list(EXPECTED_TRAINABLE))
def test_freeze_mode_trains_exactly_its_parameters(mode):
    torch.manual_seed(0)
    model = build_model("resnet20")
    trainable = freeze(model, mode)
    for module in model.modules():
        for p in module.parameters(recurse=False):
            assert p.requires_grad == EXPECTED_TRAINABLE[mode](module), (mode, module)
    assert sum(p.numel() for p in trainable) == count_parameters(model, mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if trainable:  # one SGD step changes only the trainable parameters
        optimizer = torch.optim.SGD(trainable, lr=0.1)
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8))
        loss.backward()
        optimizer.step()
    else:
        model(torch.randn(8, 3, 32, 32))
    trainable_ids = {id(p) for p in trainable}
    for name, p in model.named_parameters():
        assert (not torch.equal(p, before[name])) == (id(p) in trainable_ids), (mode, name)
    # running statistics are buffers: they move in train mode whatever trains
    assert not torch.equal(model.bn1.running_mean, before["bn1.running_mean"])


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="unknown trainable mode"):
        select_parameters(build_model("resnet20"), "bogus")


def test_resnet_py_prints_the_table():
    import subprocess
    import sys
    from conftest import REPO
    out = subprocess.run([sys.executable, "resnet.py"], cwd=REPO, capture_output=True, text=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("resnet32 "))
    assert "464,154" in row and "2,272" in row and "2,922" in row
