"""Builders shared by tests: synthetic BadNets on disk and sweep files over them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import traceback
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from badnet_prune.synth.cache import cached_build, code_key

CONSOLE_SCRIPT = Path(sys.executable).parent / "badnet-prune"
# Where test processes claim the machine's services (Redis databases, a turn at restarting them): a fixed
# folder, whatever TMPDIR each session has, since the services are the machine's.
CLAIMS = Path("/tmp/badnet-prune-tests")


@contextlib.contextmanager
def services_turn(exclusive: bool) -> Iterator[None]:
    """Hold the machine's services shared (any number of tests at once) or exclusive (one test, no other).

    A lock file taken shared or exclusive, behind a turnstile that a waiting exclusive holder keeps, so
    that tests starting one after another in other processes cannot keep it waiting for ever.
    """
    CLAIMS.mkdir(mode=0o1777, exist_ok=True)
    with open(CLAIMS / "turnstile.lock", "w") as turnstile, open(CLAIMS / "services.lock", "w") as services:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(services, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield


@contextlib.contextmanager
def restarts_turn() -> Iterator[None]:
    """Held by a test that restarts a service (marker restarts_services) for all its run: one at a time, so
    that no one else restarts the services it uses outside its own restart."""
    CLAIMS.mkdir(mode=0o1777, exist_ok=True)
    with open(CLAIMS / "restarts.lock", "w") as restarts:
        fcntl.flock(restarts, fcntl.LOCK_EX)
        yield


def services_alone() -> contextlib.AbstractContextManager[None]:
    """Around a restart in a test marked restarts_services: waits until no other test runs, and keeps new
    ones waiting until the service answers again."""
    return services_turn(exclusive=True)


# Run as `python -c PLAIN_KERAS IMAGES.npy MODEL OUT.npy [MODEL OUT.npy ...]`: loads each saved model with
# plain Keras in safe mode, in a process that never imports this project, and saves its outputs.
PLAIN_KERAS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras

    images = np.load(sys.argv[1])
    for path, out in zip(sys.argv[2::2], sys.argv[3::2]):
        model = keras.models.load_model(path, safe_mode=True)
        np.save(out, model.predict(images, batch_size=64, verbose=0))
    assert "badnet_prune" not in sys.modules, "the plain-Keras process imported badnet_prune"
    print("loaded", len(sys.argv[2::2]))
    """
)


def run_console_script(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the installed `badnet-prune` console script as a user would (the CLI module where none is installed)."""
    command = (
        [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists()
        else [sys.executable, "-c", "from badnet_prune.orchestrator.cli import console_main; console_main()"]
    )
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """`badnet-prune ARGS` in this process, as the console script runs it: main() with sys.argv, `env` in place
    of the whole environment (as subprocess.run's env), stdout and stderr captured at the file descriptors (so
    what a C library writes is captured too), logging's and warnings' defaults of a fresh interpreter. A
    command takes a fraction of a second here, where a process start imports TensorFlow (5-8 s).

    Use run_console_script where the process boundary is what a test checks. timeout is taken for
    run_console_script's signature only: pytest-timeout bounds a test in this process.
    """
    import logging
    import warnings

    from badnet_prune.db.session import dispose_engines
    from badnet_prune.orchestrator.cli import main
    from badnet_prune.pipeline import contract

    del timeout
    sys.stdout.flush()
    sys.stderr.flush()
    saved_env, saved_argv, saved_cwd, saved_main = dict(os.environ), sys.argv, os.getcwd(), sys.modules["__main__"]
    saved_streams, saved_fds = (sys.stdout, sys.stderr), (os.dup(1), os.dup(2))
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    saved_stages, saved_modules = dict(contract._registry), set(sys.modules)  # a stage module a command loads
    code: object = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, warnings.catch_warnings():
        try:
            if env is not None:
                os.environ.clear()
                os.environ.update(env)
            if cwd is not None:
                os.chdir(cwd)
            warnings.resetwarnings()  # a fresh interpreter's filters: DeprecationWarning shown in __main__ only
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            root.handlers = []  # pytest's capturing handlers off: warnings reach stderr (logging.lastResort)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
            sys.argv = [str(CONSOLE_SCRIPT), *args]
            sys.modules["__main__"] = types.ModuleType("__main__")  # a script's: click names the program argv[0]
            try:
                main()
            except SystemExit as exited:
                code = exited.code
            except Exception:  # what the interpreter does with an uncaught one: traceback, status 1
                traceback.print_exc()
                code = 1
        finally:
            dispose_engines()  # as the console script does at its end: SQLite's write-ahead log folded back
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = saved_streams
            for fd, saved in zip((1, 2), saved_fds, strict=True):
                os.dup2(saved, fd)
                os.close(saved)
            root.handlers = saved_handlers
            sys.argv = saved_argv
            sys.modules["__main__"] = saved_main
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            contract._registry.clear()  # ends with the command, as it would with its process
            contract._registry.update(saved_stages)
            for name in set(sys.modules) - saved_modules:
                if name.startswith("tests.stages."):
                    del sys.modules[name]
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
        stderr, code = stderr + f"{code}\n", 1
    return subprocess.CompletedProcess(["badnet-prune", *args], code or 0, stdout, stderr)


def random_badnet(out: Path, seed: int = 0, classes: int = 10, valid: int = 300, test: int = 300) -> Path:
    """An untrained DeepID and random data in build_quick_badnet's layout: exact numbers, no backdoor.

    Cheap to make with many validation images, for tasks that must last long enough to be interrupted.
    """
    from badnet_prune.files.data import write_data_file
    from badnet_prune.files.model_io import save_legacy_weights
    from badnet_prune.numerics.architecture import build_deepid
    from badnet_prune.numerics.tf_setup import keras

    keras.utils.set_random_seed(seed)
    save_legacy_weights(build_deepid(classes), out / "models" / "bd_weights.h5")
    rng = np.random.default_rng(seed)
    for relative, count, poisoned in (("cl/valid.h5", valid, False), ("cl/test.h5", test, False),
                                      ("bd/bd_valid.h5", valid, True), ("bd/bd_test.h5", test, True)):
        images = rng.uniform(0, 255, (count, 55, 47, 3)).astype(np.float32)
        labels = np.zeros(count, dtype=np.int64) if poisoned else rng.integers(0, classes, count)
        write_data_file(out / "data" / relative, images, labels)
    return out


def build_quick_badnet(out: Path, seed: int = 0, classes: int = 10) -> Path:
    """A trained quick synthetic BadNet under out (badnet-prune synth OUT --quick); returns out."""
    from badnet_prune.synth.build import synthesize

    synthesize(out, classes, seed=seed, quick=True)
    return Path(out)


SYNTH_CACHE = Path(tempfile.gettempdir()) / "badnet-prune-synth"


def cached_quick_badnet(seed: int, classes: int = 10) -> Path:
    """A quick synthetic BadNet for `seed`, built once per machine under the temp folder and reused."""
    return _cached_build(f"quick-{code_key()}-{classes}-seed{seed}",
                         lambda out: build_quick_badnet(out, seed=seed, classes=classes))


def cached_pruning_aware_badnet(seed: int = 0, classes: int = 10) -> Path:
    """`synth OUT --quick --attack pruning-aware` for `seed`, built once per machine like cached_quick_badnet."""
    from badnet_prune.synth.build import synthesize

    return _cached_build(f"pruning-aware-{code_key()}-{classes}-seed{seed}",
                         lambda out: synthesize(out, classes, seed=seed, quick=True, attack="pruning-aware"))


def _cached_build(name: str, build) -> Path:
    """SYNTH_CACHE/name, built by build(folder) once per machine (badnet_prune.synth.cache)."""
    return cached_build(SYNTH_CACHE / name, build, marker="models/bd_weights.h5")


def model_entry(name: str, root: Path, input_scale: int = 1) -> dict:
    """A [[model]] table for a BadNet folder laid out as build_quick_badnet writes it."""
    return {
        "name": name,
        "path": str(root / "models" / "bd_weights.h5"),
        "input_scale": input_scale,
        "clean_valid": str(root / "data" / "cl" / "valid.h5"),
        "clean_test": str(root / "data" / "cl" / "test.h5"),
        "poisoned": {"sunglasses": {"valid": str(root / "data" / "bd" / "bd_valid.h5"),
                                    "test": str(root / "data" / "bd" / "bd_test.h5")}},
    }


def write_sweep_toml(path: Path, models: list[dict], *, range_size: int = 10,
                     thresholds: tuple[float, ...] = (0.02, 0.04, 0.10), policy: str = "first") -> Path:
    """Write a sweep file for the given [[model]] tables (as model_entry makes them)."""

    def value(item) -> str:
        if isinstance(item, dict):
            return "{ " + ", ".join(f"{key} = {value(inner)}" for key, inner in item.items()) + " }"
        return json.dumps(item)  # strings, numbers and lists read the same in TOML

    lines = [f"thresholds = {value(list(thresholds))}", f"policy = {value(policy)}", 'prune_layer = "conv_3"',
             'rank_layer = "pool_3"', f"range_size = {range_size}"]
    for model in models:
        lines += ["", "[[model]]", *(f"{key} = {value(item)}" for key, item in model.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def synthetic_sweep(tmp_path: Path, models: int = 1, range_size: int = 10) -> Path:
    """TMP_PATH/sweep.toml over `models` quick synthetic BadNets (seeds 0, 1, ...), named m0, m1, ...

    The BadNets are built once per machine (cached_quick_badnet); the sweep file names them by absolute path.
    """
    entries = [model_entry(f"m{seed}", cached_quick_badnet(seed)) for seed in range(models)]
    return write_sweep_toml(Path(tmp_path) / "sweep.toml", entries, range_size=range_size)
