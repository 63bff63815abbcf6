"""The command line: spellings, the boolean flag, resolved defaults, config files and bad values."""

import argparse
import json

import pytest

from bnonly.config import Config, ConfigError, parse_args, str2bool, to_dict
from conftest import TINY, assert_one_line_error, run_train


@pytest.mark.parametrize("text, value", [("True", True), ("true", True), ("1", True), ("YES", True),
                                         ("False", False), ("false", False), ("0", False), ("no", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value


def test_str2bool_rejects_maybe():
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


@pytest.mark.parametrize("flag", ["--use-lbfgs", "--use_lbfgs"])
def test_use_lbfgs_selects_lbfgs_and_its_default_lr(flag):
    cfg, _ = parse_args([flag, "True"])
    assert cfg.optimizer == "lbfgs" and cfg.use_lbfgs is True and cfg.lr == 2.0  # the multibatch variant's
    assert parse_args([flag, "True", "--lbfgs-variant", "torch"])[0].lr == 1.0
    cfg, _ = parse_args([flag, "false"])
    assert cfg.optimizer == "sgd" and cfg.lr == 0.1


def test_defaults_and_explicit_values():
    cfg, given = parse_args([])
    assert (cfg.arch, cfg.trainable, cfg.optimizer, cfg.epochs, cfg.batch_size) == ("resnet32", "all", "sgd", 160, 128)
    assert cfg.milestones == [80, 120] and cfg.weight_decay == 1e-4 and cfg.bn_init == "uniform"
    assert given == set()
    cfg, given = parse_args(["-a", "resnet20", "-t", "bn+fc", "--use-lbfgs", "yes", "--lr", "0.5", "--wd", "0",
                             "-b", "32", "--epochs", "10", "--milestones", "3,7"])
    assert (cfg.arch, cfg.trainable, cfg.lr, cfg.weight_decay, cfg.batch_size) == ("resnet20", "bn+fc", 0.5, 0.0, 32)
    assert cfg.milestones == [3, 7] and cfg.epochs == 10
    assert {"arch", "trainable", "use_lbfgs", "lr"} <= given


def test_contradicting_optimizer_flags():
    with pytest.raises(ConfigError, match="contradicts"):
        parse_args(["--use-lbfgs", "true", "--optimizer", "sgd"])


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_with_command_line_override(tmp_path, suffix):
    path = tmp_path / f"settings{suffix}"
    values = {"arch": "resnet44", "batch-size": 64, "trainable": "bn", "use_lbfgs": "true"}
    path.write_text(json.dumps(values) if suffix == ".json" else "\n".join(f"{k}: {v}" for k, v in values.items()))
    cfg, _ = parse_args(["--config", str(path), "-b", "16"])
    assert (cfg.arch, cfg.batch_size, cfg.trainable, cfg.optimizer) == ("resnet44", 16, "bn", "lbfgs")


def test_config_file_unknown_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"learning_rate": 0.1}')
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        parse_args(["--config", str(path)])


@pytest.mark.parametrize("args, words", [
    (["-t", "foo"], ["-t/--trainable", "foo"]),
    (["--use-lbfgs", "maybe"], ["maybe"]),
    (["--epochs", "-1"], ["--epochs", "-1"]),
    (["-b", "0"], ["--batch-size"]),
    (["--lr", "nan"], ["--lr"]),
    (["--lr", "-0.1"], ["--lr", "-0.1"]),
    (["-a", "resnet33"], ["resnet33"]),
    (["--train-size", "0"], ["--train-size"]),
    (["--evaluate"], ["--resume"]),
    (["--device", "tpu"], ["--device"]),
    (["--seed", "-1"], ["--seed"]),
])
def test_bad_values_exit_2_with_one_line(args, words, tmp_path, capsys):
    from bnonly.training import trainer as train
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--save-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not (tmp_path / "run").exists()


def test_bad_flag_in_a_real_process_has_no_traceback(tmp_path):
    result = run_train(*TINY, "--use-lbfgs", "maybe", "--save-dir", tmp_path / "run")
    assert_one_line_error(result, "maybe")
    assert not (tmp_path / "run").exists()


def test_config_file_aliases_and_empty_values(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"wd": 0.0, "use-lbfgs": "yes", "train_size": null}')
    cfg, _ = parse_args(["--config", str(path)])
    assert cfg.weight_decay == 0.0 and cfg.optimizer == "lbfgs" and cfg.train_size is None
    path.write_text('{"seed": null}')
    with pytest.raises(ConfigError, match="seed in --config file is empty"):
        parse_args(["--config", str(path)])


def test_help_lists_every_setting(capsys):
    import dataclasses
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in text, f.name


@pytest.mark.parametrize("optimizer, lr", [("adam", 1e-3), ("adamw", 1e-3), ("rmsprop", 1e-2), ("adagrad", 1e-2),
                                           ("nadam", 2e-3), ("radam", 1e-3)])
def test_adaptive_optimizers_get_their_default_lr_and_build(optimizer, lr):
    from bnonly.optim.factories import build_optimizer
    from bnonly.models.resnet import build_model, freeze
    cfg = parse_args(["--optimizer", optimizer])[0]
    assert cfg.lr == lr and cfg.bn_recalibrate == 0
    built = build_optimizer(cfg, freeze(build_model("resnet20"), "bn"))
    assert type(built).__name__.lower() == optimizer and built.param_groups[0]["lr"] == lr
    assert parse_args(["--optimizer", optimizer, "--lr", "0.05"])[0].lr == 0.05


@pytest.mark.parametrize("power, lr", [(None, 1.6), ("1", 0.4), ("0.75", 1.6)])
def test_ngd_defaults_follow_the_screens_and_its_lr_the_power(power, lr):
    from bnonly.phases import phase_settings
    flags = ["--ngd-power", power] if power else []
    cfg = parse_args(["-t", "bn", "--optimizer", "ngd", *flags])[0]
    assert (cfg.lr, cfg.ngd_refresh, cfg.ngd_power) == (lr, 50, float(power or 0.5))
    assert parse_args(["-t", "bn", "--optimizer", "ngd", *flags, "--lr", "0.2"])[0].lr == 0.2
    phased = parse_args(["--optimizer", "sgd", "--phases", "bn:3:ngd,all:27", *flags])[0]
    assert [(phase_settings(phased, index).optimizer, phase_settings(phased, index).lr)
            for index in (0, 1)] == [("ngd", lr), ("sgd", 0.1)]


def test_betas_eps_and_nesterov_reach_the_optimizer():
    from bnonly.optim.factories import build_optimizer
    from bnonly.models.resnet import build_model, freeze
    params = freeze(build_model("resnet20"), "bn")
    adam = build_optimizer(parse_args(["--optimizer", "adam", "--betas", "0.8,0.99", "--eps", "1e-6"])[0], params)
    assert adam.param_groups[0]["betas"] == (0.8, 0.99) and adam.param_groups[0]["eps"] == 1e-6
    assert build_optimizer(parse_args(["--nesterov", "true"])[0], params).param_groups[0]["nesterov"]


@pytest.mark.parametrize("args, words", [
    (["--optimizer", "adam", "--betas", "0.9"], "2 comma-separated numbers"),
    (["--optimizer", "adam", "--betas", "0.9,1.5"], "--betas must be"),
    (["--betas", "0.9,0.99"], "--betas is for adam"),
    (["--optimizer", "rmsprop", "--eps", "0"], "--eps must be above 0"),
    (["--eps", "1e-8"], "--eps is not a setting of sgd"),
    (["--optimizer", "adam", "--nesterov", "true"], "--nesterov needs"),
    (["--momentum", "0", "--nesterov", "true"], "--nesterov needs"),
])
def test_bad_optimizer_settings(args, words, capsys):
    from bnonly.training import trainer as train
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("flags,words", [
    (["--lbfgs-variant", "multibatch", "--lbfgs-batch-size", "5"], ["even", "5"]),
    (["--lbfgs-variant", "batch", "--lbfgs-max-iter", "1"], ["--lbfgs-max-iter", "at least 2"]),
    (["--lbfgs-variant", "torch", "--lbfgs-line-search", "armijo"], ["armijo", "strong_wolfe or none"]),
    (["--lbfgs-variant", "hvp", "--lbfgs-line-search", "strong_wolfe"], ["strong_wolfe", "armijo or none"]),
    (["--lbfgs-variant", "multibatch", "--lbfgs-history-mode", "reset"], ["reset", "multibatch"]),
    (["--lbfgs-variant", "batch", "--lbfgs-momentum", "0.9"], ["--lbfgs-momentum", "none"]),
    (["--lbfgs-variant", "multibatch", "--lbfgs-momentum", "1"], ["--lbfgs-momentum", "[0, 1)"]),
    (["--lbfgs-variant", "hvp", "--lbfgs-max-eval", "4"], ["--lbfgs-max-eval", "torch"]),
    (["--lbfgs-variant", "torch", "--lbfgs-variance-scaling", "true"], ["--lbfgs-variance-scaling", "torch"]),
    (["--lbfgs-damping", "-1"], ["--lbfgs-damping", ">= 0"]),
    (["--lbfgs-variant", "torch", "--lbfgs-damping", "0.1"], ["--lbfgs-damping", "torch"]),
    (["--lbfgs-variant", "hvp", "--compile", "true"], ["hvp", "--compile"]),
    (["--lbfgs-variant", "hvp", "--sync-bn", "true"], ["hvp", "--sync-bn"]),
])
def test_lbfgs_variant_settings_that_do_not_fit_are_one_line_errors(flags, words):
    with pytest.raises(ConfigError) as error:
        parse_args(["--use-lbfgs", "true", *flags])
    assert "\n" not in str(error.value) and all(word in str(error.value) for word in words), str(error.value)


def test_each_lbfgs_variant_fills_its_own_defaults_and_flags_override_them():
    from bnonly.config import DEFAULT_LBFGS_VARIANT, LBFGS_DEFAULTS
    assert parse_args(["--use-lbfgs", "true"])[0].lbfgs_variant == DEFAULT_LBFGS_VARIANT
    for variant, defaults in LBFGS_DEFAULTS.items():
        cfg = parse_args(["--use-lbfgs", "true", "--lbfgs-variant", variant])[0]
        assert {name: getattr(cfg, name) for name in defaults} == defaults
    cfg = parse_args(["--use-lbfgs", "true", "--lbfgs-variant", "batch", "--lbfgs-batch-size", "512"])[0]
    assert (cfg.lbfgs_batch_size, cfg.lbfgs_max_iter) == (512, LBFGS_DEFAULTS["batch"]["lbfgs_max_iter"])


def test_a_checkpoint_from_before_the_variants_resumes_as_torch():
    from bnonly.training.resuming import resume_config
    old = to_dict(parse_args(["--use-lbfgs", "true", "--lbfgs-variant", "torch"])[0])
    del old["lbfgs_variant"], old["lbfgs_variance_scaling"], old["lbfgs_damping"], old["lbfgs_momentum"]
    cli, given = parse_args(["--resume", "x"])
    assert resume_config({"config": old}, cli, given).lbfgs_variant == "torch"
    with pytest.raises(ConfigError, match="multibatch"):  # the saved torch settings do not fit another variant
        resume_config({"config": old}, *parse_args(["--resume", "x", "--lbfgs-variant", "multibatch"]))
