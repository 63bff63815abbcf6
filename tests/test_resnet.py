"""The CIFAR ResNets: sizes, option-A structure, init, and which parameters each freeze mode trains."""

import argparse

import pytest
import torch
import torch.nn as nn

import resnet as resnet_command  # the command at the root: python resnet.py
from bnonly.models import resnet
from bnonly.models.resnet import build_model, count_parameters, freeze, select_parameters

CHANNELS_LAST = torch.channels_last


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


def bn_gammas_and_betas(model):
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return torch.cat([m.weight.detach() for m in bns]), torch.cat([m.bias.detach() for m in bns])


@pytest.mark.parametrize("bn_init", resnet.BN_INITS)
def test_every_bn_init_has_zero_beta(bn_init):
    _, betas = bn_gammas_and_betas(build_model("resnet20", bn_init=bn_init))
    assert betas.abs().sum() == 0


def test_bn_init_signed_is_uniform_on_minus_one_to_one():
    torch.manual_seed(0)
    gammas, _ = bn_gammas_and_betas(build_model("resnet20", width=4, bn_init="signed"))  # 2,752 gammas
    assert gammas.min() >= -1 and gammas.max() < 1
    assert (gammas < -0.5).any() and (gammas > 0.5).any()
    assert abs(gammas.mean()) < 0.05 and abs(gammas.std() - (1 / 3) ** 0.5) < 0.05  # U[-1,1): std 1/sqrt(3)


def test_bn_init_normal_is_standard_normal():
    torch.manual_seed(0)
    gammas, _ = bn_gammas_and_betas(build_model("resnet20", width=4, bn_init="normal"))  # 2,752 gammas
    assert abs(gammas.mean()) < 0.1 and abs(gammas.std() - 1) < 0.1
    assert gammas.min() < -2 and gammas.max() > 2  # tails beyond [-1, 1]


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


def conv_weights(model):
    """Every conv's effective weight (the parametrized one in mode random), detached copies in model order."""
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Conv2d)]


def chosen_entries(model):
    return [m.parametrizations.weight[0] for m in model.modules() if isinstance(m, nn.Conv2d)]


def sgd_steps(model, params, steps=3, memory_format=torch.contiguous_format, seed=0):
    """A few SGD steps with momentum and weight decay on fixed random data."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-3)
    for _ in range(steps):
        images = torch.randn(8, 3, 32, 32, generator=generator).contiguous(memory_format=memory_format)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), torch.arange(8)).backward()
        optimizer.step()


@pytest.mark.parametrize("arch, width", [("resnet20", 1), ("resnet32", 1), ("resnet56", 1), ("resnet20", 2)])
def test_random_mode_trains_as_many_parameters_as_bn(arch, width):
    model = build_model(arch, width=width)
    total, bn = count_parameters(model), count_parameters(model, "bn")
    trainable = freeze(model, "random", seed=0)
    assert sum(p.numel() for p in trainable) == count_parameters(model, "random") == bn
    assert count_parameters(model) == total  # the chosen entries are not counted twice
    assert [id(p) for p in trainable] == [id(entries.values) for entries in chosen_entries(model)]
    if arch == "resnet32" and width == 1:
        assert bn == 2_272 and total == 464_154


def test_random_mode_needs_freeze_and_applies_once():
    model = build_model("resnet20")
    with pytest.raises(ValueError, match="first"):
        select_parameters(model, "random")
    freeze(model, "random")
    with pytest.raises(ValueError, match="already"):
        freeze(model, "random")


def test_random_mode_keeps_the_function():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    images = torch.randn(4, 3, 32, 32)
    before = model(images)
    freeze(model, "random", seed=5)
    assert torch.equal(model(images), before)


def test_random_mode_trains_exactly_two_entries_per_output_channel():
    torch.manual_seed(0)
    model = build_model("resnet20")
    trainable = freeze(model, "random", seed=0)
    before_weights = conv_weights(model)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    sgd_steps(model, trainable)  # weight decay and momentum: every parameter they reach moves
    for before, after, entries in zip(before_weights, conv_weights(model), chosen_entries(model)):
        changed = before != after  # everything else is bit-identical
        assert torch.equal(changed.flatten(1).sum(1), torch.full((before.shape[0],), 2))
        assert torch.equal(changed.flatten().nonzero().flatten(), entries.index)
        assert torch.equal(after.flatten()[entries.index], entries.values.detach())
    for name, p in model.named_parameters():  # BN, linear and the frozen originals do not move
        if not name.endswith(".values"):
            assert torch.equal(p, before_state[name]), name
    assert not torch.equal(model.bn1.running_mean, before_state["bn1.running_mean"])  # buffers still update


def test_random_mode_positions_follow_the_seed():
    def positions(seed):
        return torch.cat([entries.index for entries in chosen_entries(model_with_seed(seed))])

    def model_with_seed(seed):
        model = build_model("resnet20")
        freeze(model, "random", seed=seed)
        return model

    assert torch.equal(positions(0), positions(0))
    assert not torch.equal(positions(0), positions(1))


def test_draw_positions_are_distinct_within_each_output_channel():
    generator = torch.Generator().manual_seed(0)
    every = resnet.draw_positions(3, 4, 4, generator)  # all 4 of each channel's 4 weights
    assert torch.equal(every, torch.arange(12))
    two = resnet.draw_positions(500, 3, 2, generator).view(500, 2)
    assert (two[:, 0] < two[:, 1]).all()
    assert torch.equal(two // 3, torch.arange(500).unsqueeze(1).expand(500, 2))  # inside their own channel
    with pytest.raises(ValueError):
        resnet.draw_positions(1, 3, 4, generator)


@pytest.mark.parametrize("convert_before_freeze", [True, False])
def test_random_mode_channels_last_matches_nchw(convert_before_freeze):
    def model(memory_format):
        torch.manual_seed(0)
        net = build_model("resnet20")
        if convert_before_freeze:
            net = net.to(memory_format=memory_format)
        params = freeze(net, "random", seed=3)
        return net.to(memory_format=memory_format), params

    nchw, nchw_params = model(torch.contiguous_format)
    last, last_params = model(CHANNELS_LAST)
    assert last.layer2[0].conv1.weight.is_contiguous(memory_format=CHANNELS_LAST)
    sgd_steps(nchw, nchw_params, steps=1)  # one step: more would amplify rounding differences
    sgd_steps(last, last_params, steps=1, memory_format=CHANNELS_LAST)
    for a, b in zip(nchw_params, last_params):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(conv_weights(nchw), conv_weights(last)):
        assert (a != b).flatten(1).sum(1).max() <= 2  # the frozen entries agree bit for bit
    images = torch.randn(4, 3, 32, 32)
    nchw.eval()
    last.eval()
    assert torch.allclose(nchw(images), last(images.contiguous(memory_format=CHANNELS_LAST)), atol=1e-5)


def test_random_mode_state_dict_round_trip():
    torch.manual_seed(0)
    trained = build_model("resnet20")
    sgd_steps(trained, freeze(trained, "random", seed=7))
    torch.manual_seed(1)  # another init: everything must come from the state_dict
    restored = build_model("resnet20")
    freeze(restored, "random", seed=7)
    restored.load_state_dict(trained.state_dict(), strict=True)
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(trained.eval()(images), restored.eval()(images))


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="unknown trainable mode"):
        select_parameters(build_model("resnet20"), "bogus")


@pytest.mark.slow  # builds every depth up to ResNet-1202; the counts per depth are tested above
def test_resnet_py_prints_the_table():
    import subprocess
    import sys
    from conftest import REPO
    out = subprocess.run([sys.executable, "resnet.py"], cwd=REPO, capture_output=True, text=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("resnet32 "))
    assert "464,154" in row and "2,272" in row and "2,922" in row
    assert out.splitlines()[0].split()[-1] == "random" and row.split()[-1] == "2,272"


def test_any_depth_6n_plus_2_builds_and_others_are_refused():
    """The paper's deepest ResNet builds, with 2 x (16 + 2n (16 + 32 + 64)) BN gamma/beta for n blocks a stage."""
    from bnonly.config import arch_name
    model = resnet.build_model("resnet866")
    n = (866 - 2) // 6
    assert count_parameters(model, "bn") == 2 * (16 + 2 * n * (16 + 32 + 64)) == 64_544
    assert len(model.layer3) == n
    for depth in range(0, 100):  # config's check of a name and the model's agree
        name = f"resnet{depth}"
        valid = depth >= 8 and (depth - 2) % 6 == 0
        if valid:
            assert arch_name(name) == name and resnet.depth_of(name) == depth
        else:
            with pytest.raises(ValueError, match="6n"):
                resnet.depth_of(name)
            with pytest.raises(argparse.ArgumentTypeError, match="6n"):
                arch_name(name)
    for name in ("resnet", "resnet-32", "ResNet32", "resnet32x"):
        with pytest.raises(ValueError):
            resnet.depth_of(name)


def test_resnet_py_prints_the_depths_it_is_given(capsys):
    assert resnet_command.main(["14", "resnet218"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows] == ["arch", "resnet14", "resnet218"]
    assert rows[1].split()[3] == "928"  # BN gamma/beta of ResNet-14: 2 x (16 + 2 x 2 x 112)
    assert resnet_command.main(["33"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "resnet33" in error[0] and "6n + 2" in error[0]
    assert resnet_command.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python resnet.py [DEPTH | 1dDEPTH | resnetD | resnet1dD ...]")
