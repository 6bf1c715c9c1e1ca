"""Memory-aware architecture search (lab 11, ``memlab search``): small MLPs, CNNs and
transformers for the real digits, under a device profile's budget.

Each trial, Optuna (a maintained library: its seeded ``RandomSampler`` or the multi-objective
``NSGAIISampler``) proposes an architecture (``memlab.workloads.architectures``); its inference
peak is **predicted** first (``memlab.estimate`` on fake tensors, in the service worker: a
fraction of a second), and a candidate over the budget is marked infeasible
(``Trial.set_constraint``, which NSGA-II's constrained domination reads) and never trained.
Each feasible one is trained briefly on the real digits (fp32, in the service worker) for its
test accuracy, and its request latency is measured there (median of a few forwards of one
batch, on this machine: not the device's). The Pareto front over (accuracy up, predicted peak
down, latency down) is recomputed after every trial; the chosen model (the most accurate
trained candidate, the lower predicted peak on a tie) is verified by a real ``memlab.run``
with its tensors held to the budget, its measured peak beside its prediction.

The kernel runs this module without torch: everything torch-side is a job in a worker.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from memlab.workloads.architectures import FAMILIES, Architecture

if TYPE_CHECKING:
    from memlab.config import Experiment
    from memlab.timeline import RunResult

__all__ = [
    "SAMPLERS",
    "SearchSpace",
    "Candidate",
    "Verification",
    "SearchResult",
    "search_architectures",
    "pareto_front",
    "candidate_experiment",
    "train_and_time",
    "Architecture",
]

SAMPLERS = ("random", "nsga2")
#: The tolerance the chosen model's measured peak is held to against its prediction.
VERIFY_TOLERANCE = 0.03


def _widths() -> Mapping[str, tuple[int, ...]]:
    return MappingProxyType(
        {"mlp": (32, 64, 128, 256, 512), "cnn": (8, 16, 32, 64), "transformer": (16, 32, 64)}
    )


@dataclass(frozen=True)
class SearchSpace:
    """What the search may propose (pure data): the families, block counts, widths per family
    (features, or a CNN's channels), CNN kernel sizes and MLP/transformer expansions."""

    families: tuple[str, ...] = FAMILIES
    depths: tuple[int, ...] = (1, 2, 3, 4)
    widths: Mapping[str, tuple[int, ...]] = field(default_factory=_widths)
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (1, 2, 4)

    def __post_init__(self) -> None:
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ValueError(
                f"families must be a non-empty subset of {FAMILIES}, got {self.families!r}"
            )
        for name in ("depths", "kernels", "expansions"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for fam in self.families:
            if not self.widths.get(fam):
                raise ValueError(f"widths must give at least one width for {fam!r}")
        # Every combination must be a valid Architecture (odd kernels, head-divisible widths).
        for fam in self.families:
            for w in self.widths[fam]:
                for k in self.kernels if fam == "cnn" else (3,):
                    for e in self.expansions if fam != "cnn" else (4,):
                        Architecture(fam, self.depths[0], w, kernel=k, expansion=e)
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be positive, got {self.depths!r}")

    def suggest(self, trial: Any) -> Architecture:
        """The architecture an Optuna ``trial`` proposes (conditional parameters per family)."""
        fam = trial.suggest_categorical("family", list(self.families))
        depth = trial.suggest_categorical("depth", list(self.depths))
        width = trial.suggest_categorical(f"{fam}_width", list(self.widths[fam]))
        if fam == "cnn":
            return Architecture(
                fam, depth, width, kernel=trial.suggest_categorical("kernel", list(self.kernels))
            )
        exp = trial.suggest_categorical("expansion", list(self.expansions))
        return Architecture(fam, depth, width, expansion=exp)


@dataclass(frozen=True)
class Candidate:
    """One trial: the architecture, its predicted peak (always), and where it fitted, its
    accuracy on the real digits after the short training and its latency measured here."""

    number: int
    architecture: str
    family: str
    predicted_peak_bytes: int
    feasible: bool
    trained: bool = False
    accuracy: float | None = None
    latency_s: float | None = None
    params: int | None = None
    #: Whether the latency was measured with the machine to itself (``memlab.timing``'s
    #: verdict over the timed forwards); ``latency_note`` says what else used the CPU.
    latency_steady: bool | None = None
    latency_note: str = ""

    @property
    def arch(self) -> Architecture:
        return Architecture.parse(self.architecture)


@dataclass(frozen=True)
class Verification:
    """The chosen model's real run, its tensors held to the budget."""

    architecture: str
    status: str
    predicted_peak_bytes: int
    measured_peak_bytes: int | None
    budget_bytes: int
    rss_peak_bytes: int | None = None

    @property
    def relative_error(self) -> float | None:
        """(measured - predicted) / predicted; ``None`` without a measurement."""
        if self.measured_peak_bytes is None or self.status != "ok":
            return None
        return (self.measured_peak_bytes - self.predicted_peak_bytes) / self.predicted_peak_bytes

    @property
    def within_tolerance(self) -> bool:
        err = self.relative_error
        return err is not None and abs(err) <= VERIFY_TOLERANCE


@dataclass(frozen=True)
class SearchResult:
    """A search's trials in order, the Pareto front (trial numbers), the chosen candidate and
    its verification (``None`` while the search runs, or when nothing fitted)."""

    sampler: str
    seed: int
    profile: str
    budget_bytes: int
    train_steps: int
    experiment: Mapping[str, Any]
    candidates: tuple[Candidate, ...] = ()
    pareto: tuple[int, ...] = ()
    chosen: Candidate | None = None
    verification: Verification | None = None

    @property
    def trained(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.trained)

    @property
    def infeasible(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if not c.feasible)

    def __getitem__(self, number: int) -> Candidate:
        for c in self.candidates:
            if c.number == number:
                return c
        raise KeyError(f"no trial number {number}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: what ``memlab search --json`` prints."""
        d = dataclasses.asdict(self)
        d["experiment"] = dict(self.experiment)
        if self.verification is not None:
            d["verification"]["relative_error"] = self.verification.relative_error
            d["verification"]["within_tolerance"] = self.verification.within_tolerance
        return d


def _objectives(c: Candidate) -> tuple[float, float, float]:
    """Minimised objectives of a trained candidate: -accuracy, predicted peak, latency."""
    assert c.accuracy is not None and c.latency_s is not None
    return (-c.accuracy, float(c.predicted_peak_bytes), c.latency_s)


def pareto_front(candidates: Sequence[Candidate]) -> tuple[int, ...]:
    """Trial numbers of the trained candidates no other trained candidate dominates (at least
    as good in accuracy, predicted peak and latency, better in one). Candidates of the same
    architecture count once (the first trial)."""
    seen: dict[str, Candidate] = {}
    for c in candidates:
        if c.trained and c.architecture not in seen:
            seen[c.architecture] = c
    pts = list(seen.values())
    front = []
    for c in pts:
        a = _objectives(c)
        dominated = any(
            all(x <= y for x, y in zip(_objectives(o), a, strict=True)) and _objectives(o) != a
            for o in pts
            if o is not c
        )
        if not dominated:
            front.append(c.number)
    return tuple(sorted(front))


def _choose(candidates: Sequence[Candidate]) -> Candidate | None:
    trained = [c for c in candidates if c.trained and c.accuracy is not None]
    if not trained:
        return None
    return max(trained, key=lambda c: (c.accuracy, -c.predicted_peak_bytes, -c.number))


def candidate_experiment(arch: Architecture, base: Experiment) -> Experiment:
    """``base`` (the profile, budget, batch and run settings) building ``arch``."""
    return base.replace(workload=arch.workload)


def train_and_time(exp: Experiment, train_steps: int, repeats: int = 5) -> dict[str, Any]:
    """A worker job: ``exp``'s model trained for ``train_steps`` steps on the real digits
    (fp32, CPU, ``Workload.fit``), its test accuracy, its parameter count, and its median
    latency over forwards of one ``exp.batch_size`` batch in inference mode (after one untimed
    forward), on this machine: at least ``repeats`` of them and at least
    ``timing.MIN_WINDOW_S`` in all, so that ``memlab.timing`` can say whether other processes
    disturbed them (``latency_steady``, ``latency_note``)."""
    import os
    import statistics
    import time

    import torch

    from memlab import timing
    from memlab.workloads import build_workload

    small = exp.replace(
        mode="train",
        data="ram",
        data_size=exp.batch_size,
        num_workers=0,
        device="cpu",
        profile="none",
        budget_bytes=None,
    )
    torch.manual_seed(small.seed)
    w = build_workload(small, "cpu")
    w.fit(train_steps, seed=small.seed)
    accuracy = w.evaluate()
    params = sum(p.numel() for p in w.model.parameters())
    x, _ = next(w.make_batches(1))
    w.model.eval()
    clock = timing.StepClock()
    readings: list[timing.StepReading] = []
    with torch.inference_mode():
        w.model(x)
        before, t0 = timing.process_snapshot(), time.perf_counter()
        # /proc/stat counts 10 ms ticks: the verdict needs a window of MIN_WINDOW_S, so a fast
        # model is timed more often (up to 500 forwards) rather than judged on a few ticks.
        until = time.perf_counter() + timing.MIN_WINDOW_S
        while len(readings) < repeats or (time.perf_counter() < until and len(readings) < 500):
            clock.begin()
            w.model(x)
            readings.append(clock.end())
        after, spent = timing.process_snapshot(), time.perf_counter() - t0
    verdict = timing.assess(
        [r.wall_s for r in readings],
        [r.cpu_s for r in readings],
        [r.busy_s for r in readings],
        cpus=clock.cpus,
        threads=torch.get_num_threads(),
        busiest=timing.busiest_others(before, after, spent, exclude=[os.getpid()]),
        what="timed forwards",
    )
    return {
        "accuracy": accuracy,
        "latency_s": statistics.median(r.wall_s for r in readings),
        "params": params,
        "latency_steady": verdict.steady,
        "latency_note": verdict.note,
    }


def _check_args(
    profile: str, budget_bytes: int | str | None, trials: int, sampler: str, train_steps: int
) -> int:
    """Validates the search's arguments; returns the budget in bytes."""
    from memlab import devices
    from memlab.config import ConfigError, parse_bytes

    if profile not in devices.PROFILES:
        raise ValueError(f"profile must be one of {', '.join(devices.PROFILES)}, got {profile!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    for name, v in (("trials", trials), ("train_steps", train_steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int of at least 1, got {v!r}")
    if budget_bytes is None:
        return devices.PROFILES[profile].budget_bytes
    if isinstance(budget_bytes, (int, float)) and not isinstance(budget_bytes, bool):
        if not budget_bytes > 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes!r}")
    try:
        return parse_bytes(budget_bytes, name="budget_bytes")
    except ConfigError as e:
        raise ValueError(str(e)) from None


def search_architectures(
    space: SearchSpace | None = None,
    *,
    profile: str,
    budget_bytes: int | str | None = None,
    trials: int = 20,
    sampler: str = "nsga2",
    seed: int = 0,
    train_steps: int = 100,
    batch_size: int = 32,
    population_size: int | None = None,
    verify: bool = True,
    on_trial: Callable[[SearchResult], None] | None = None,
    cache: dict[Any, Candidate] | None = None,
) -> SearchResult:
    """Search ``space`` for ``trials`` trials under ``profile`` (its budget, or
    ``budget_bytes``: the model's share of the device), with Optuna's ``sampler``
    (``random`` or ``nsga2``) seeded by ``seed``. Every candidate's inference peak (batch
    ``batch_size``) is predicted; those over the budget are infeasible and never trained; the
    others are trained ``train_steps`` steps for accuracy and timed. ``on_trial`` gets the
    result so far after each trial (on the caller's thread). With ``verify``, the chosen
    candidate is run for real, its tensors held to the budget. ``population_size`` is NSGA-II's
    generation size (default: a third of the trials, between 4 and 10). ``cache`` (a dict
    shared between searches of the same settings) keeps each architecture's prediction,
    accuracy and latency, so a proposal seen before is not estimated or trained again."""
    space = SearchSpace() if space is None else space
    if not isinstance(space, SearchSpace):
        raise ValueError(f"space must be a memlab.nas.SearchSpace, got {type(space).__name__}")
    budget = _check_args(profile, budget_bytes, trials, sampler, train_steps)
    try:
        import optuna
    except ImportError as e:
        raise ImportError(
            "the architecture search needs Optuna: pip install 'memlab[search]' "
            "(or pip install optuna)"
        ) from e
    from memlab import jobs, runner
    from memlab.config import Experiment

    base = Experiment(
        workload="mlp",
        mode="inference",
        batch_size=batch_size,
        data_size=max(batch_size, 256),
        steps=3,
        warmup=1,
        device="cpu",
        profile=profile,
        budget_bytes=budget,
        seed=seed,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler == "random":
        opt_sampler: Any = optuna.samplers.RandomSampler(seed=seed)
    else:
        pop = population_size or min(10, max(4, trials // 3))
        opt_sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    study = optuna.create_study(
        directions=["maximize", "minimize", "minimize"], sampler=opt_sampler
    )
    result = SearchResult(
        sampler=sampler,
        seed=seed,
        profile=profile,
        budget_bytes=budget,
        train_steps=train_steps,
        experiment=base.to_dict(),
    )
    done: dict[Any, Candidate] = {} if cache is None else cache
    settings = (tuple(sorted(base.to_dict().items())), train_steps)
    candidates: list[Candidate] = []
    for number in range(trials):
        trial = study.ask()
        arch = space.suggest(trial)
        key = (arch.name, settings)  # a repeated proposal is not estimated or trained again
        prev = done.get(key)
        if prev is None:
            exp = candidate_experiment(arch, base)
            peak = runner.call(jobs.estimate_each, [exp])[0].peak_bytes
            feasible = peak <= budget
            fields: dict[str, Any] = {}
            if feasible:
                fields = runner.call(train_and_time, exp, train_steps)
            prev = Candidate(
                number=number,
                architecture=arch.name,
                family=arch.family,
                predicted_peak_bytes=int(peak),
                feasible=feasible,
                trained=feasible,
                **fields,
            )
            done[key] = prev
        cand = dataclasses.replace(prev, number=number)
        candidates.append(cand)
        # Feasible when <= 0 (Optuna's convention); NSGA-II ranks feasible trials first.
        trial.set_constraint("peak_over_budget", float(cand.predicted_peak_bytes - budget))
        if cand.trained:
            assert cand.accuracy is not None and cand.latency_s is not None
            values = [cand.accuracy, float(cand.predicted_peak_bytes), cand.latency_s]
        else:  # not trained: no accuracy, no latency (the constraint already rules it out)
            values = [0.0, float(cand.predicted_peak_bytes), math.inf]
        study.tell(trial, values)
        result = dataclasses.replace(
            result, candidates=tuple(candidates), pareto=pareto_front(candidates)
        )
        if on_trial is not None:
            on_trial(result)
    chosen = _choose(candidates)
    verification = None
    if chosen is not None and verify:
        verification = verify_candidate(chosen, base)
    result = dataclasses.replace(result, chosen=chosen, verification=verification)
    if on_trial is not None:
        on_trial(result)
    return result


def verify_candidate(chosen: Candidate, base: Experiment) -> Verification:
    """``chosen`` run for real (``memlab.run``, a fresh worker) with its tensors held to
    ``base``'s budget: its measured peak beside its prediction.

    The run keeps the budget as the tracked-tensor limit but not the profile's RSS cap: that
    cap also charges what the estimator does not predict and a device runtime would not carry
    (torch's own buffers, the allocator's slack; measured: ~17 MiB over a 16 MiB budget for
    models whose tensors peaked below it), so a model that fits would end ``oom`` for memory
    that is not its own. The process's RSS peak is reported beside it (``rss_peak_bytes``)."""
    from memlab.runner import run

    budget = base.effective_budget_bytes
    assert budget is not None
    exp = candidate_experiment(chosen.arch, base).replace(profile="none", budget_bytes=budget)
    r: RunResult = run(exp)
    return Verification(
        architecture=chosen.architecture,
        status=r.status,
        predicted_peak_bytes=chosen.predicted_peak_bytes,
        measured_peak_bytes=r.peak_bytes if r.status == "ok" else None,
        budget_bytes=budget,
        rss_peak_bytes=r.rss_peak_bytes,
    )
