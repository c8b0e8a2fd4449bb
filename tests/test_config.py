import dataclasses
import re

import pytest

from harness.config import RunConfig, SupportSpec, from_dict, override, to_dict, to_json


def test_override_dotted_paths_change_only_the_named_fields():
    base = RunConfig()
    changed = override(base, **{"model.head.nms_iou": 0.3, "phase2.steps": 7, "seed": 3})
    assert changed.model.head.nms_iou == 0.3 and changed.phase2.steps == 7 and changed.seed == 3
    # everything else is untouched, and the base is not mutated (frozen)
    assert dataclasses.replace(changed, seed=base.seed, phase2=base.phase2, model=base.model) == base
    assert base.model.head.nms_iou == 0.5


def test_override_unknown_field_names_the_culprit():
    with pytest.raises(KeyError, match="nms_iuo"):
        override(RunConfig(), **{"model.head.nms_iuo": 0.3})


def test_dict_round_trip_and_hash_stability():
    config = override(RunConfig(), **{"test.support": SupportSpec("sliding", radius=4)})
    restored = from_dict(RunConfig, to_dict(config))
    assert restored == config
    assert to_json(restored) == to_json(config)


def test_override_accepts_a_dict_for_a_nested_config():
    changed = override(
        RunConfig(), **{"data.train_support": {"strategy": "random_window", "num": 2, "radius": 3}}
    )
    assert changed.data.train_support == SupportSpec("random_window", num=2, radius=3)


def test_cli_overrides_parse_json_else_string_and_reject_missing_equals():
    from harness.cli import parse_overrides

    parsed = parse_overrides(["phase2.steps=300", "data.synth_preset=tiny", 'test.support={"radius": 2}'])
    assert parsed == {"phase2.steps": 300, "data.synth_preset": "tiny", "test.support": {"radius": 2}}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_overrides(["phase2.steps"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"phase2.steps": "abc"}, "phase2.steps: expected int, got 'abc'"),
        ({"phase2.lr": "fast"}, "phase2.lr: expected float, got 'fast'"),
        ({"test.protocols": "devkit"}, "test.protocols: expected a list of one of 'devkit', 'fixed', 'coco'"),
        ({"test.protocols": ["devkit", "cocoo"]}, "test.protocols: expected a list"),
        ({"data.on_bad_input": "ignore"}, "data.on_bad_input: expected one of 'raise', 'skip', got 'ignore'"),
        ({"test.support": {"strategy": "slidin"}}, "test.support.strategy: expected one of 'none'"),
        ({"phase1_seed": 1.5}, "phase1_seed: expected int or null, got 1.5"),
        ({"test.seq_nms": "yes"}, "test.seq_nms: expected bool"),
    ],
)
def test_ill_typed_values_are_refused_naming_the_full_key(changes, message):
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        override(RunConfig(), **changes)


def test_misspelt_nested_key_names_the_full_path():
    with pytest.raises(KeyError, match=re.escape("'model.head.nms_iuo'")):
        override(RunConfig(), **{"model.head.nms_iuo": 0.3})


def test_well_typed_values_pass_and_lists_become_tuples():
    config = override(RunConfig(), **{"test.protocols": ["devkit"], "phase2.lr": 1, "phase1_seed": None})
    assert config.test.protocols == ("devkit",) and config.phase2.lr == 1


def test_from_dict_refuses_ill_typed_json():
    from harness.config import ConfigError

    data = to_dict(RunConfig())
    data["phase2"]["steps"] = "300"
    with pytest.raises(ConfigError, match="phase2.steps: expected int, got '300'"):
        from_dict(RunConfig, data)


def test_train_command_refuses_a_method_without_supports_before_training(tmp_path, capsys):
    from harness.cli import main

    with pytest.raises(SystemExit, match="names alignment 'stsn'.*both 'none'"):
        main(["train", "--runs", str(tmp_path), "--set", "model.aggregation.alignment=stsn"])
    with pytest.raises(SystemExit, match="unknown alignment 'foo'"):
        main(
            [
                "train",
                "--runs",
                str(tmp_path),
                "--set",
                "model.aggregation.alignment=foo",
                'data.train_support={"strategy": "random_window", "num": 2, "radius": 3}',
            ]
        )
    with pytest.raises(SystemExit, match="phase2.steps: expected int"):
        main(["train", "--runs", str(tmp_path), "--set", "phase2.steps=abc"])
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_cli_errors_are_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    from harness.cli import main

    def broken(args):
        raise FileNotFoundError(f"{tmp_path}/ablation.json is missing")

    monkeypatch.setattr("harness.cli._report", broken)
    assert main(["report", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"vodbench report: FileNotFoundError: {tmp_path}/ablation.json is missing"
    assert err == [f"{expected} (--debug shows the traceback)"]
    with pytest.raises(FileNotFoundError):
        main(["--debug", "report", "--out", str(tmp_path)])
