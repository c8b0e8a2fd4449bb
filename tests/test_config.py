import dataclasses

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

    parsed = parse_overrides(
        ["phase2.steps=300", "data.synth_preset=tiny", 'test.support={"radius": 2}']
    )
    assert parsed == {"phase2.steps": 300, "data.synth_preset": "tiny", "test.support": {"radius": 2}}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_overrides(["phase2.steps"])
