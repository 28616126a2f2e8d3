"""The notebook API: `from badnet_prune import defend` runs the defense on one model, as the `defend` command
does, and returns the typed read model; importing the package stays cheap (no TensorFlow, no database)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from badnet_prune.db.model_results import ModelResults
from badnet_prune.numerics.errors import BadInputError
from tests.helpers import cached_quick_badnet


def test_importing_the_api_loads_neither_tensorflow_nor_the_orchestrator():
    heavy = "('tensorflow', 'keras', 'sqlalchemy', 'badnet_prune.orchestrator', 'celery')"
    code = f"import sys; from badnet_prune import defend; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def defended(tmp_path_factory, monkeypatch_module):
    from badnet_prune import defend

    root = cached_quick_badnet(0)
    out = tmp_path_factory.mktemp("api") / "out"
    data = root / "data"
    results = defend(root / "models" / "bd_net.h5", data / "cl" / "valid.h5", data / "cl" / "test.h5", out,
                     poisoned={"sunglasses": (data / "bd" / "bd_valid.h5", data / "bd" / "bd_test.h5")},
                     thresholds=["2%", 0.1])
    return results, out


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    """The run's cache and database in the test's folders, never a broker from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BADNET_PRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("BADNET_PRUNE_BROKER", raising=False)
        patch.delenv("BADNET_PRUNE_DB", raising=False)
        yield patch


def test_defend_returns_the_typed_results_and_writes_what_the_command_writes(defended):
    results, out = defended
    assert isinstance(results, ModelResults)
    assert results.status == "done" and results.name == "bd_net"
    assert [entry.threshold.key for entry in results.thresholds] == ["0.02", "0.1"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["acc0"] == results.acc0
    assert summary["B"]["clean_accuracy"] == results.b.clean_accuracy
    assert summary["B"]["asr_sunglasses"] == results.b.asr["sunglasses"]
    for entry in results.thresholds:
        stored = summary["thresholds"][entry.threshold.key]
        assert stored["step"] == entry.step
        if entry.step is not None:
            assert stored["G"]["clean_accuracy"] == entry.g.clean_accuracy
            assert (out / "models" / f"G_{entry.threshold.key}.keras").is_file()
    assert (out / "steps.csv").read_text(encoding="utf-8").count("\n") == len(results.steps) + 1
    assert (out / "badnet-prune.db").is_file(), "the database goes with the results, as for the command"


@pytest.mark.parametrize(
    "overrides, phrase",
    [
        ({"thresholds": [1.5]}, "--thresholds"),
        ({"thresholds": "0.02,0.04"}, "--thresholds"),
        ({"policy": "last"}, "--policy"),
        ({"poisoned": {"x": "bd_valid.h5"}}, "poisoned['x']"),
        ({"stages": {"fine_tune": {"epochs": 0}}}, "--epochs"),
        ({"stages": {"no_such_stage": True}}, "stages['no_such_stage']: no such stage"),
    ],
)
def test_bad_arguments_raise_bad_input_error_before_anything_runs(tmp_path, overrides, phrase):
    from badnet_prune import defend

    root = cached_quick_badnet(0)
    data = root / "data"
    with pytest.raises(BadInputError) as raised:
        defend(root / "models" / "bd_net.h5", data / "cl" / "valid.h5", data / "cl" / "test.h5", tmp_path / "out",
               **overrides)
    assert phrase in str(raised.value)
    assert not (tmp_path / "out").exists()
