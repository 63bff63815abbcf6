"""Models beyond the CIFAR ResNets: torchvision's zoo (-a torchvision:NAME), the ImageNet ResNets
(-a imagenet:resnetD), freezing by module type on any of them, and --init-from's weights."""

import argparse

import pytest
import torch
import torch.nn as nn
import torchvision

import resnet as resnet_command  # the command at the root: python resnet.py
from bnonly.config import IMAGENET_DEPTHS, arch_name
from bnonly.models import ModelError
from bnonly.models.freezing import count_parameters, final_linear, freeze, is_batchnorm, untrainable
from bnonly.models.imagenet_resnet import LAYERS
from bnonly.models.pretrained import load_pretrained
from bnonly.models.registry import build_model
from conftest import assert_one_line_error, run_train

TINY_DATA = ["--dataset", "synthetic", "--train-size", "64", "--test-size", "32", "-b", "32", "--no-progress",
             "--precision", "fp32"]
TINY_RUN = [*TINY_DATA, "--epochs", "1"]


def on_meta(arch, **arguments):
    """The model on the meta device (shapes only), or on the CPU where its constructor reads tensor values."""
    try:
        with torch.device("meta"):
            return build_model(arch, **arguments)
    except NotImplementedError:  # RegNet computes its widths with tensors
        return build_model(arch, **arguments)


@pytest.mark.parametrize("arch, total, bn", [
    ("torchvision:resnet50", 25_557_032, 53_120),
    ("torchvision:resnet18", 11_689_512, 9_600),
    ("imagenet:resnet50", 25_557_032, 53_120),
    ("imagenet:resnet200", 64_673_832, 176_000),
])
def test_parameter_counts_for_imagenet_classes(arch, total, bn):
    model = on_meta(arch, num_classes=1000)
    assert (count_parameters(model), count_parameters(model, "bn")) == (total, bn)


def test_imagenet_resnets_are_torchvisions_at_width_1_and_scale_with_width():
    assert tuple(LAYERS) == IMAGENET_DEPTHS  # config's check of a name and the models agree
    for depth in IMAGENET_DEPTHS[:-1]:  # torchvision has no ResNet-200
        ours = on_meta(f"imagenet:resnet{depth}", num_classes=1000).state_dict()
        with torch.device("meta"):
            theirs = getattr(torchvision.models, f"resnet{depth}")().state_dict()
        assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()], depth
    wide = on_meta("imagenet:resnet50", width=2)
    assert wide.conv1.out_channels == 128 and wide.layer4[0].conv1.out_channels == 1024
    assert wide.fc.in_features == 4096 and wide.fc.out_features == 10
    model = build_model("imagenet:resnet18").eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # CIFAR's 32 pixels run through the ImageNet stem


FAMILIES = ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0",
            "torchvision:vgg11_bn", "torchvision:regnet_x_400mf", "imagenet:resnet18"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_mode_trains_exactly_its_parameters_in_any_family(arch):
    model = on_meta(arch)
    classifier = final_linear(model)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert classifier is linears[-1] and classifier.out_features == 10
    expected = {"all": lambda m: True, "bn": is_batchnorm, "fc": lambda m: m is classifier,
                "bn+fc": lambda m: is_batchnorm(m) or m is classifier, "none": lambda m: False}
    for mode, trains in expected.items():
        assert not untrainable(model, mode)
        trainable = {id(p) for p in freeze(model, mode)}
        for module in model.modules():
            for p in module.parameters(recurse=False):
                assert (id(p) in trainable) == trains(module), (arch, mode, module)
    assert count_parameters(model, "fc") == sum(p.numel() for p in classifier.parameters())
    assert count_parameters(model, "bn") > 0


def test_fc_is_the_classifier_only_where_there_are_several_linear_layers():
    vgg = on_meta("torchvision:vgg11_bn")
    assert sum(isinstance(m, nn.Linear) for m in vgg.modules()) == 3
    assert [id(p) for p in freeze(vgg, "fc")] == [id(vgg.classifier[6].weight), id(vgg.classifier[6].bias)]


def test_random_mode_on_a_torchvision_resnet_trains_as_many_as_bn():
    model = on_meta("torchvision:resnet18")
    freeze(model, "random")
    assert count_parameters(model, "random") == count_parameters(model, "bn") == 9_600


def test_what_a_mode_cannot_train_is_named():
    assert "BatchNorm" in untrainable(on_meta("torchvision:convnext_tiny"), "bn")  # LayerNorm only
    assert "BatchNorm" in untrainable(on_meta("torchvision:vit_b_16"), "bn+fc")
    assert "Linear" in untrainable(on_meta("torchvision:squeezenet1_0"), "fc")  # a conv classifier
    assert "Conv" in untrainable(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), "random")
    assert untrainable(on_meta("torchvision:convnext_tiny"), "fc") == ""


@pytest.mark.parametrize("bn_init", ["uniform", "ones"])
def test_bn_init_reaches_every_batchnorm_of_a_torchvision_model(bn_init):
    torch.manual_seed(0)
    model = build_model("torchvision:resnet50", bn_init=bn_init)  # torchvision would leave gamma 1 (or 0)
    gammas = torch.cat([m.weight.detach() for m in model.modules() if is_batchnorm(m)])
    betas = torch.cat([m.bias.detach() for m in model.modules() if is_batchnorm(m)])
    assert betas.abs().sum() == 0
    if bn_init == "ones":
        assert torch.all(gammas == 1)
    else:
        assert gammas.min() >= 0 and gammas.max() < 1 and gammas.std() > 0.2
        assert model.layer1[0].bn3.weight.abs().sum() > 0  # the residual branch's last BN is not zero-initialised


def test_model_names_are_checked_in_config_and_when_built():
    for name in ("torchvision:resnet50", "torchvision:vit_b_16", "imagenet:resnet200", "resnet32", "resnet1d20"):
        assert arch_name(name) == name
    for name in ("imagenet:resnet51", "imagenet:vgg16", "torchvision:", "torchvision:res-net", "timm:resnet50"):
        with pytest.raises(argparse.ArgumentTypeError):
            arch_name(name)
    with pytest.raises(ModelError, match="resnet50"):  # the closest names are suggested
        build_model("torchvision:resnet51")
    with pytest.raises(ModelError, match="width"):
        build_model("torchvision:resnet18", width=2)


def test_resnet_py_prints_the_counts_of_prefixed_models(capsys):
    assert resnet_command.main(["torchvision:resnet18", "imagenet:resnet18"]) == 0
    rows = [row.split() for row in capsys.readouterr().out.splitlines()]
    assert rows[1] == ["torchvision:resnet18", "-", "11,689,512", "9,600", "522,600", "9,600"]
    assert rows[2][:4] == ["imagenet:resnet18", "18", "11,689,512", "9,600"]
    assert resnet_command.main(["torchvision:resnet51"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "resnet50" in error[0]


@pytest.mark.parametrize("args, words", [
    (["-a", "torchvision:resnet51"], ["torchvision:resnet51", "resnet50"]),
    (["-a", "torchvision:vgg11", "-t", "bn"], ["-t bn", "torchvision:vgg11", "BatchNorm"]),
    (["-a", "torchvision:vit_b_16", "-t", "bn+fc"], ["-t bn+fc", "torchvision:vit_b_16", "BatchNorm"]),
    (["-a", "torchvision:squeezenet1_0", "--phases", "fc:1,all:1"], ["--phases fc", "squeezenet1_0", "Linear"]),
    (["-a", "torchvision:resnet18", "--width", "2"], ["--width", "torchvision:resnet18"]),
    (["-a", "torchvision:resnet18", "--dataset", "synthetic-audio"], ["torchvision:resnet18", "audio"]),
])
def test_models_that_cannot_run_are_one_line_errors(args, words, tmp_path):
    result = run_train(*TINY_DATA, *args, "--save-dir", tmp_path / "run")
    assert_one_line_error(result, *words)
    assert not (tmp_path / "run").exists()


def test_init_from_loads_a_state_dict_with_wrapper_prefixes(tmp_path):
    torch.manual_seed(0)
    source = build_model("torchvision:mobilenet_v3_small")
    state = source.state_dict()
    for prefix in ("", "module.", "module._orig_mod."):
        path = tmp_path / "weights.pth"
        torch.save({prefix + key: value for key, value in state.items()}, path)
        torch.manual_seed(1)  # another init: everything must come from the file
        model = build_model("torchvision:mobilenet_v3_small")
        assert load_pretrained(model, str(path)) == []
        assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items()), prefix


def test_init_from_mismatches_are_one_line_errors(tmp_path):
    state = build_model("imagenet:resnet18").state_dict()
    cases = {"shape": ({**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, "(64, 3, 3, 3)"),
             "unknown": ({**state, "conv9.weight": torch.zeros(1)}, "conv9.weight"),
             "missing": ({k: v for k, v in state.items() if k != "bn1.bias"}, "bn1.bias"),
             "no tensors": ({"config": {"arch": "resnet18"}}, "no state dict")}
    for name, (contents, words) in cases.items():
        torch.save(contents, tmp_path / f"{name}.pth")
        with pytest.raises(ModelError, match=words.replace("(", r"\(").replace(")", r"\)")) as error:
            load_pretrained(build_model("imagenet:resnet18"), str(tmp_path / f"{name}.pth"))
        assert "\n" not in str(error.value)
    result = run_train(*TINY_RUN, "-a", "imagenet:resnet18", "--init-from", tmp_path / "shape.pth",
                       "--save-dir", tmp_path / "run")
    assert_one_line_error(result, "--init-from", "conv1.weight", "(64, 3, 3, 3)", "(64, 3, 7, 7)")


def test_init_from_reaches_the_run_and_redraws_a_classifier_of_other_classes(tmp_path):
    """-t none trains nothing: the run's parameters are the file's but for the 1,000-class fc."""
    torch.manual_seed(5)
    weights = torchvision.models.resnet18(num_classes=1000).state_dict()
    torch.save({"module." + key: value for key, value in weights.items()}, tmp_path / "resnet18.pth")
    result = run_train(*TINY_RUN, "-a", "torchvision:resnet18", "-t", "none", "--init-from",
                       tmp_path / "resnet18.pth", "--save-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "1000 classes" in result.stderr and "fresh" in result.stderr
    model = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert model["fc.weight"].shape == (10, 512)
    for key, value in model.items():
        if key.endswith(("weight", "bias")) and not key.startswith("fc."):
            assert torch.equal(value, weights[key]), key


def test_a_bn_only_torchvision_run_and_its_checkpoint_as_init_from(tmp_path):
    result = run_train(*TINY_RUN, "-a", "torchvision:resnet18", "-t", "bn", "--save-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "9,600 of 11,181,642 parameters trainable" in result.stdout
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    model = build_model("torchvision:resnet18")
    assert load_pretrained(model, str(tmp_path / "run" / "checkpoint.pt")) == []
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
