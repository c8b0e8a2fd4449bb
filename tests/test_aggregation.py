import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.aggregation import (
    ENTRY_POINT_GROUP,
    REGISTRY,
    AlignmentOutput,
    Registry,
    TemporalContext,
    WindowAggregator,
    build_aggregator,
    masked_softmax,
)
from harness.config import AggregationConfig


def _ctx(b=2, t=3, c=4, h=5, w=6):
    return TemporalContext(
        reference=torch.randn(b, c, h, w),
        supports=torch.randn(b, t, c, h, w),
        offsets=torch.zeros(b, t, dtype=torch.long),
        valid=torch.ones(b, t, dtype=torch.bool),
    )


def test_registry_rejects_duplicates_and_lists_known_names_on_unknown():
    registry = Registry()

    @registry.register("fusion", "x")
    class A(torch.nn.Module):
        pass

    with pytest.raises(KeyError, match="already registered"):
        registry.register("fusion", "x")(type("B", (torch.nn.Module,), {}))
    with pytest.raises(KeyError, match="unknown alignment 'nope'.*identity"):
        REGISTRY.get("alignment", "nope")
    with pytest.raises(ValueError, match="unknown kind"):
        registry.register("head", "x")


def test_build_aggregator_unknown_method_names_it():
    with pytest.raises(KeyError, match="unknown fusion 'median'"):
        build_aggregator(AggregationConfig(fusion="median"), channels=4)


def test_window_aggregator_without_supports_returns_the_reference():
    aggregator = build_aggregator(AggregationConfig(alignment="identity", fusion="average"), channels=4)
    ctx = _ctx(t=0)
    out = aggregator(ctx)
    assert torch.equal(out.features, ctx.reference)


def test_context_validation_names_the_bad_field():
    ctx = _ctx()
    ctx.offsets = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="offsets"):
        ctx.validate()
    ctx = _ctx()
    ctx.supports = torch.randn(2, 3, 5, 5, 6)
    with pytest.raises(ValueError, match="supports"):
        ctx.validate()


def test_window_aggregator_checks_the_alignment_output_shape():
    class Broken(torch.nn.Module):
        needs_images = needs_oracle_flow = False

        def forward(self, ctx):
            return AlignmentOutput(ctx.supports[:, :1])

    aggregator = WindowAggregator(Broken(), REGISTRY.get("fusion", "average")(channels=4))
    with pytest.raises(RuntimeError, match="Broken returned"):
        aggregator(_ctx())


def test_masked_softmax_gives_exactly_zero_to_masked_entries():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    valid = torch.tensor([[True, False, True]])
    out = masked_softmax(logits, valid, dim=1)
    assert out[0, 1] == 0
    expected = torch.softmax(torch.tensor([1.0, 3.0]), 0)
    torch.testing.assert_close(out[0, [0, 2]], expected)


def test_window_aggregator_fuses_the_aligned_reference_when_the_alignment_returns_one():
    class ZeroReference(torch.nn.Module):
        needs_images = needs_oracle_flow = False

        def forward(self, ctx):
            return AlignmentOutput(ctx.supports, reference=torch.zeros_like(ctx.reference))

    ctx = _ctx(t=1)
    out = WindowAggregator(ZeroReference(), REGISTRY.get("fusion", "average")(channels=4))(ctx)
    torch.testing.assert_close(out.features, ctx.supports[:, 0] / 2)


# ---------------------------------------------------------------------------------------------
# Registration through the ``vodbench.methods`` entry-point group
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]

PLUGIN_SOURCE = '''
"""A user's own package: one alignment, registered the way builtin methods are."""
from harness.aggregation import Alignment, AlignmentOutput, register


@register("alignment", "plugin_negate")
class NegateAlignment(Alignment):
    """Supports times -1 (a test plugin)."""

    def __init__(self, channels: int, *, scale: float = -1.0):
        super().__init__(channels)
        self.scale = scale

    def forward(self, ctx):
        return AlignmentOutput(self.scale * ctx.supports)
'''


def _entry_points_of(*declared: importlib.metadata.EntryPoint):
    """A stand-in for ``importlib.metadata.entry_points`` that knows only ``declared``."""

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return [ep for ep in declared if ep.group == group]

    return entry_points


@pytest.fixture
def plugin_module(tmp_path, monkeypatch) -> str:
    """A throwaway importable module ``vodbench_test_plugin`` (removed from sys.modules afterwards)."""
    (tmp_path / "vodbench_test_plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vodbench_test_plugin", raising=False)
    yield "vodbench_test_plugin"
    sys.modules.pop("vodbench_test_plugin", None)


def test_registry_loads_a_user_plugin_from_the_entry_point_group_once(plugin_module, monkeypatch):
    registry = Registry(entry_point_group="vodbench.methods")
    monkeypatch.setattr("harness.aggregation.register", registry.register)  # the plugin registers here
    calls = []
    plugin = importlib.metadata.EntryPoint(name="mine", value=plugin_module, group="vodbench.methods")
    other_group = importlib.metadata.EntryPoint(name="x", value="no_such_module", group="other.group")
    fake = _entry_points_of(plugin, other_group)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: calls.append(kw) or fake(**kw))

    assert plugin_module not in sys.modules  # nothing imported before the first question
    assert registry.names("alignment") == ["plugin_negate"]
    cls = registry.get("alignment", "plugin_negate")
    assert cls.__module__ == plugin_module
    registry.names("fusion")
    assert calls == [{"group": "vodbench.methods"}]  # loaded once
    ctx = _ctx(t=2)
    torch.testing.assert_close(cls(channels=4)(ctx).features, -ctx.supports)


def test_a_plugin_that_fails_to_import_is_named(monkeypatch):
    registry = Registry(entry_point_group="vodbench.methods")
    broken = importlib.metadata.EntryPoint(
        name="broken", value="no_such_module_xyz", group="vodbench.methods"
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points_of(broken))
    with pytest.raises(ImportError, match="'broken' = 'no_such_module_xyz'.*vodbench.methods"):
        registry.names("alignment")
    with pytest.raises(ImportError, match="broken"):  # not silently marked as loaded
        registry.get("alignment", "identity")


def test_pyproject_declares_the_builtin_methods_entry_point():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == {"builtin": "methods"}
    assert REGISTRY.entry_point_group == ENTRY_POINT_GROUP


def test_installed_entry_points_register_the_builtin_methods(tmp_path):
    """The installed case end to end, without touching the environment: a distribution whose metadata
    carries pyproject.toml's entry points (a .dist-info folder on PYTHONPATH, as an install writes one)
    makes a fresh interpreter that never imports ``methods`` itself find the builtin parts."""
    tomllib = pytest.importorskip("tomllib")
    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    dist_info = tmp_path / "vodbench_entry_point_probe-0.dist-info"
    dist_info.mkdir()
    metadata = "Metadata-Version: 2.1\nName: vodbench-entry-point-probe\nVersion: 0\n"
    (dist_info / "METADATA").write_text(metadata)
    (dist_info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
            for group, entries in groups.items()
        )
    )
    script = (
        "import json, sys; from harness.aggregation import REGISTRY; "
        "assert 'methods' not in sys.modules; "
        "print(json.dumps([REGISTRY.names('alignment'), REGISTRY.names('fusion')]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    alignments, fusions = json.loads(result.stdout)
    assert {"identity", "flow_warp", "stsn"} <= set(alignments)
    assert {"average", "cosine_softmax"} <= set(fusions)


def test_describe_lists_each_part_with_its_kwargs_and_summary():
    infos = {(info.kind, info.name): info for info in REGISTRY.describe()}
    stsn = infos[("alignment", "stsn")]
    assert stsn.qualname == "methods.stsn.STSNAlignment"
    assert stsn.kwargs["channels"] is inspect.Parameter.empty
    assert stsn.kwargs["num_layers"] == 4 and stsn.kwargs["resample_reference"] is True
    assert stsn.summary == "STSN sampling block as an alignment."
    window = infos[("aggregator", "window")]
    assert window.qualname == "harness.aggregation.WindowAggregator"
    assert set(window.kwargs) == {"alignment", "fusion"}
    kinds = [info.kind for info in REGISTRY.describe()]
    assert kinds == sorted(kinds, key=Registry.KINDS.index)


def test_methods_command_prints_every_registered_part(capsys):
    from harness.cli import main

    assert main(["methods"]) == 0
    printed = capsys.readouterr().out
    for info in REGISTRY.describe():
        assert f"{info.kind}:{info.name}" in printed and info.qualname in printed
    assert "num_layers=4" in printed


def test_window_aggregator_fuses_the_moved_values_with_the_raw_reference():
    ctx = _ctx(t=2)
    ctx.support_values = 3.0 * ctx.supports
    aggregator = build_aggregator(AggregationConfig(alignment="identity", fusion="average"), channels=4)
    expected = (ctx.reference + 3.0 * ctx.supports.sum(dim=1)) / 3
    torch.testing.assert_close(aggregator(ctx).features, expected)

    class ZeroReference(torch.nn.Module):  # returns an aligned reference, which values make unused
        needs_images = needs_oracle_flow = False

        def forward(self, ctx):
            return AlignmentOutput(ctx.values, reference=torch.zeros_like(ctx.reference))

    out = WindowAggregator(ZeroReference(), REGISTRY.get("fusion", "average")(channels=4))(ctx)
    torch.testing.assert_close(out.features, expected)
    ctx.support_values = torch.randn(2, 2, 5, 5, 6)  # C' = 5: the fusion cannot fuse it with C = 4
    with pytest.raises(ValueError, match="aligned"):
        aggregator(ctx)
    ctx.support_values = torch.randn(2, 2, 4, 5, 5)
    with pytest.raises(ValueError, match="support_values"):
        ctx.validate()
