"""`badnet-prune zoo OUT`: a population of clean and backdoored synthetic models, its manifest and sweep file."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from badnet_prune.numerics.errors import BadInputError
from badnet_prune.orchestrator.options import load_settings

if TYPE_CHECKING:
    from badnet_prune.synth.population import PlannedModel, ZooMix
    from badnet_prune.synth.zoo import ZooModel, ZooSettings


def zoo(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write the zoo into: a folder per model "
                                        "(the lab's layout), manifest.json, manifest.csv and sweep.toml.")],
    models: Annotated[int | None, typer.Option(
        "--models", min=1, help="How many models, spread evenly over the six attacks (clean, sunglasses, "
        "pruning-aware, patch, blended, multi-trigger), e.g. --models 6 for one of each. Default: 3 of each (18).")
    ] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", min=0, help="The first seed of each attack: its models take seeds SEED, SEED+1, ... (default 0), "
        "e.g. --seed 100 for a zoo no test uses.")] = None,
    quick: Annotated[bool | None, typer.Option(
        "--quick/--full", help="Model size: quick (the default) is test-sized, about 20 s of CPU a model; full "
        "is the demo size (32 classes, more photos), several times longer. E.g. --full.")] = None,
    classes: Annotated[int | None, typer.Option(
        "--classes", min=3, max=1283, help="Identities per model, e.g. --classes 20 (default 10 quick, 32 full).")
    ] = None,
    mix: Annotated[Path | None, typer.Option(
        "--mix", help="A TOML file with the mix instead of the options above, e.g. `seed = 100` and "
        "`models = { clean = 2, patch = 5 }` (keys: seed, size, classes, poison_rate, blend_alpha, "
        "blend_test_alpha, models).")] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Where built models are kept and reused, keyed by attack, seed, settings and the generator's "
        "code (default: the zoo folder inside BADNET_PRUNE_CACHE), e.g. --cache /scratch/zoo-cache.")] = None,
    fine_tune: Annotated[bool, typer.Option(
        "--fine-tune/--no-fine-tune", help="Whether the sweep file fine-prunes every threshold (a fine_tune table "
        "of defaults; the default), or prunes only, e.g. --no-fine-tune for a quicker sweep.")] = True,
    broker: Annotated[str | None, typer.Option(
        "--broker", help="Build on the workers of this Celery broker, one task per model (default: "
        "$BADNET_PRUNE_BROKER; without one, the models are built in this process). The workers must see OUT and "
        "the cache at the same paths. Example: --broker redis://127.0.0.1:6379/0")] = None,
    db: Annotated[str | None, typer.Option(
        "--db", help="The database the workers' builds are recorded in, with a broker: the one the workers use "
        "(default: $BADNET_PRUNE_DB, else ./badnet-prune.db). Example: --db postgresql://postgres@127.0.0.1/badnet")
    ] = None,
) -> None:
    """Build a population of clean and backdoored DeepIDs on face-like photos, list them and write a sweep file.

    Each model is a pure function of its attack, seed and settings, built once into the cache and linked
    into OUT/NAME; a second run with the same options only links. The manifest (manifest.json and .csv)
    has one row per model: attack, triggers, targets, poison rate, seed, and B's clean accuracy and ASR
    per trigger measured on the written files. OUT/sweep.toml carries each model's ground truth.
    With a broker (--broker or $BADNET_PRUNE_BROKER) each model is one task on the workers, recorded in the
    database (the table zoo_builds), and this command waits for them; interrupted, it can be run again to
    collect what the workers built meanwhile.
    Exit status: 0 all built, 1 some model missed its accuracy (the others are written), 2 bad input.

    Example: badnet-prune zoo zoo --models 12 --seed 100, then badnet-prune sweep zoo/sweep.toml --wait
    """
    from badnet_prune.synth.population import DEFAULT_MIX, ZooMix, spread

    if mix is not None:
        given = [name for name, value in (("--models", models), ("--seed", seed), ("--quick/--full", quick),
                                          ("--classes", classes)) if value is not None]
        if given:
            raise BadInputError(", ".join(given), f"given with --mix {mix}: set it in the mix file instead")
        plan_mix = read_mix(mix)
    else:
        plan_mix = ZooMix(seed=seed or 0, size="full" if quick is False else "quick", classes=classes,
                          models=spread(models) if models else dict(DEFAULT_MIX))
    app_settings = load_settings(db=db, broker=broker)
    if not app_settings.broker_url:
        _require_tensorflow()
    settings = plan_mix.settings()
    plan = plan_mix.plan()
    if out.exists() and not out.is_dir():
        raise BadInputError(out, "is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for planned in plan:
        folder = out / planned.name
        if folder.exists() and not (folder / "zoo.json").is_file():
            raise BadInputError(folder, "exists and is not a zoo model: refused, so that nothing else is overwritten")
    cache_dir = cache if cache is not None else app_settings.cache_dir / "zoo"
    if app_settings.broker_url:
        from badnet_prune.orchestrator.zoo_queue import build_on_workers

        built, failed = build_on_workers(app_settings, plan, settings, cache_dir, out, Console(stderr=True))
    else:
        built, failed = _build_all(plan, settings, cache_dir, out, Console(stderr=True))

    from badnet_prune.orchestrator.zoo_sweep import write_zoo_sweep
    from badnet_prune.synth.population import manifest_row, write_manifest

    write_manifest(out, [manifest_row(record, record.name) for record in built], settings)
    sweep_path = write_zoo_sweep(out, [(record.name, record) for record in built], fine_tune) if built else None
    _print_summary(built, failed, out, sweep_path)
    if failed:
        raise typer.Exit(1)


def read_mix(path: Path) -> ZooMix:
    """The mix file, validated strictly; every problem one line naming the file and the key."""
    from pydantic import ValidationError

    from badnet_prune.synth.population import ZooMix

    if not path.is_file():
        raise BadInputError(path, "no such mix file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BadInputError(path, f"not valid TOML ({error})") from error
    try:
        return ZooMix.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            where = ".".join(str(part) for part in item["loc"] if part != "[key]") or "the mix"
            message = item["msg"].removeprefix("Value error, ")
            got = "" if item["type"] in ("missing", "extra_forbidden", "value_error") else f", got {item['input']!r}"
            if item["type"] == "extra_forbidden":
                message = f"unknown key (allowed: {', '.join(ZooMix.model_fields)})"
            problems.append(f"{where}: {message}{got}")
        raise BadInputError(path, "; ".join(problems)) from None


def _require_tensorflow() -> None:
    from badnet_prune.numerics.tf_setup import keras

    if keras.backend.backend() != "tensorflow":
        raise BadInputError("KERAS_BACKEND", f"zoo trains with TensorFlow, not {keras.backend.backend()}: "
                            "run it with KERAS_BACKEND=tensorflow (its files defend on any backend)")


def _build_all(plan: list[PlannedModel], settings: ZooSettings, cache_dir: Path, out: Path, console: Console
               ) -> tuple[list[ZooModel], dict[str, str]]:
    """Every planned model, from the cache or built; the records, and the failures by name with their reason."""
    from badnet_prune.synth.zoo import RECORD_FILE, SynthesisError, cache_key, cached_model

    cached = {p.name for p in plan if (cache_dir / cache_key(p.attack, p.seed, settings) / RECORD_FILE).is_file()}
    console.print(f"zoo: {len(plan)} models, {len(cached)} already built in {cache_dir}, {len(plan) - len(cached)} "
                  f"to build", soft_wrap=True, markup=False)
    view = _BuildView(console, len(plan), [p for p in plan if p.name not in cached])
    built: list[ZooModel] = []
    failed: dict[str, str] = {}
    with view:
        for index, planned in enumerate(plan, start=1):
            step = f"[{index}/{len(plan)}] {planned.name}"
            view.start(planned, step, linking=planned.name in cached)
            try:
                record, _ = cached_model(planned.attack, planned.seed, settings, cache_dir, out / planned.name,
                                         progress=lambda text, step=step: view.step(f"{step}: {text}"))
            except SynthesisError as error:
                failed[planned.name] = str(error)
                view.finish(planned, f"{step} failed: {error}")
                continue
            built.append(record)
            asr = ", ".join(f"ASR {t.name} {t.asr_test:.2f}%" for t in record.triggers)
            view.finish(planned, f"{step}: clean {record.clean_test_accuracy:.2f}%, {asr}")
    return built, failed


class _BuildView:
    """Models done of planned, the model and step at work, and the time left: on a terminal a live bar,
    piped a line per model.

    The time left is measured, never assumed: each attack's mean build time in this run (the mean of
    all attacks for one not built yet) times the models left to build, less the current one's time so far.
    Models linked from the cache take no time; before the first build ends, the time left is unknown.
    """

    def __init__(self, console: Console, total: int, to_build: list[PlannedModel]) -> None:
        self.console = console
        self.left = [p.attack for p in to_build]
        self.seconds: dict[str, list[float]] = {}
        self.started = time.monotonic()
        self.building = False
        self.progress = Progress(TextColumn("zoo"), BarColumn(), MofNCompleteColumn(), TextColumn("models"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[left]}"),
                                 TextColumn("{task.description}"), console=console, transient=False,
                                 disable=not console.is_terminal)
        self.bar = self.progress.add_task("", total=total, left="")

    def __enter__(self) -> _BuildView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def start(self, planned: PlannedModel, step: str, linking: bool) -> None:
        self.started = time.monotonic()
        self.building = not linking
        if self.building:
            self.left.remove(planned.attack)
        self.step(f"{step}: {'linking from the cache' if linking else 'building'}")

    def step(self, text: str) -> None:
        self.progress.update(self.bar, description=escape(text), left=self._left())

    def finish(self, planned: PlannedModel, line: str) -> None:
        took = time.monotonic() - self.started
        if self.building:
            self.seconds.setdefault(planned.attack, []).append(took)
        self.building = False
        self.progress.update(self.bar, advance=1, left=self._left())
        left = self._left()
        self.console.print(f"{line} ({took:.0f} s{'; ' + left if left else ''})", soft_wrap=True, markup=False)

    def _left(self) -> str:
        every = [s for times in self.seconds.values() for s in times]
        if not self.left and not self.building:
            return ""
        if not every:
            return "time left: known after the first build"
        mean = sum(every) / len(every)
        per_attack = {attack: sum(times) / len(times) for attack, times in self.seconds.items()}
        ahead = sum(per_attack.get(attack, mean) for attack in self.left)
        current = max(0.0, mean - (time.monotonic() - self.started)) if self.building else 0.0
        return f"about {_duration(ahead + current)} left"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _print_summary(built: list[ZooModel], failed: dict[str, str], out: Path, sweep_path: Path | None) -> None:
    """Per attack: models, B's clean test accuracy and ASR (lowest and mean); then what was written."""
    from badnet_prune.synth.zoo import ATTACKS

    table = Table(title=f"{out}: {len(built)} models")
    for column in ("attack", "models", "clean test acc % (min / mean)", "ASR on test % (min / mean)"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for attack in ATTACKS:
        records = [record for record in built if record.attack == attack]
        if not records:
            continue
        clean = [record.clean_test_accuracy for record in records]
        asr = [t.asr_test for record in records for t in record.triggers]
        label = f"{attack} (would-be trigger)" if attack == "clean" else attack
        table.add_row(label, str(len(records)), f"{min(clean):.2f} / {sum(clean) / len(clean):.2f}",
                      f"{min(asr):.2f} / {sum(asr) / len(asr):.2f}")
    console = Console()
    console.print(table)
    for name, reason in failed.items():
        Console(stderr=True).print(f"model {name} failed: {reason}", soft_wrap=True, markup=False)
    console.print(f"wrote {out / 'manifest.json'}, {out / 'manifest.csv'}"
                  + (f" and {sweep_path}; next: badnet-prune sweep {sweep_path} --wait" if sweep_path else ""),
                  soft_wrap=True, markup=False)
