"""Option parsing shared by the commands: method options, the model option group, ``--threads``,
``--device`` and the output folder.

- Method options: ``KEY=VALUE`` (``explain``, ``bench``) and ``NAME.KEY=VALUE`` (``evaluate``).
  Values are read as JSON when they parse (``n_samples=50`` is an int, ``layer=null`` is ``None``,
  ``channels=[0,5]`` a list) and kept as text otherwise (``baseline=blur``). Keys take ``-`` or
  ``_`` alike (``noise-level`` is ``noise_level``). A key that none of the chosen methods takes is
  refused (exit code 2) with the known keys listed, before the model loads.
- The model group (:func:`model_options`): ``--model`` (a name, a model file or
  ``package.module:callable``), ``--weights``, ``--trust-model-file``, ``--labels``,
  ``--input-size``, ``--resize``, ``--mean``, ``--std``; checked by :func:`model_spec` before
  anything loads, loaded by :func:`load_model` (both ``saliencekit.models``).
- ``--threads`` (:func:`threads_option`, :func:`apply_threads`): torch's thread count; by default
  the CPUs this process may use (CPU affinity and cgroup quota) less those other processes keep
  busy, or torch's own choice when ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` is set.
- :class:`OutputFolder`: a command's files are written to a temporary folder beside ``--out`` and
  moved into it at the end, so a failure or an interruption leaves no partial output.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import click

# ``score`` is an argument of ``explain`` that every method takes (the score space of a class target)
EXPLAIN_ARGUMENTS = ("score",)
POSITIVE = click.IntRange(min=1)


def parse_value(text: str) -> Any:
    """``text`` as JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key(text: str) -> str:
    return text.strip().replace("-", "_")


def parse_options(pairs: Iterable[str], param_hint: str = "--option") -> Dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{key: value}``; a pair without ``=`` is refused."""
    out: Dict[str, Any] = {}
    for p in pairs:
        if "=" not in p or not p.split("=", 1)[0].strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint=param_hint)
        k, v = p.split("=", 1)
        out[_key(k)] = parse_value(v)
    return out


def parse_named_options(pairs: Iterable[str], param_hint: str) -> Dict[str, Dict[str, Any]]:
    """``["NAME.KEY=VALUE", ...]`` -> ``{name: {key: value}}`` (e.g. ``smoothgrad.n_samples=20``)."""
    out: Dict[str, Dict[str, Any]] = {}
    for p in pairs:
        if "=" not in p or "." not in p.split("=", 1)[0]:
            raise click.BadParameter(f"expected NAME.KEY=VALUE, got {p!r}", param_hint=param_hint)
        lhs, v = p.split("=", 1)
        name, k = lhs.split(".", 1)
        out.setdefault(name.strip(), {})[_key(k)] = parse_value(v)
    return out


def accepted_options(method: str) -> List[str]:
    """The option keys a registered method takes: its spec's ``defaults`` and the ``explain``
    arguments every method takes (``score``)."""
    from ..methods import REGISTRY

    return [*EXPLAIN_ARGUMENTS, *REGISTRY[method].defaults]


def _unknown_key(key: str, known: Sequence[str], owners: str, param_hint: str) -> click.BadParameter:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return click.BadParameter(f"unknown option {key!r}{hint}: not an option of {owners}; known options: "
                              f"{', '.join(known) or '(none)'}", param_hint=param_hint)


def check_option_keys(options: Mapping[str, Any], methods: Sequence[str], param_hint: str = "--option") -> None:
    """Refuse any key of ``options`` that none of ``methods`` (registered names) takes, listing the
    keys they do take, and a ``score`` outside the score spaces."""
    known: List[str] = []
    for m in methods:
        known += [k for k in accepted_options(m) if k not in known]
    for key in options:
        if key not in known:
            raise _unknown_key(key, known, ", ".join(methods), param_hint)
    if "score" in options:
        from ..core.targets import check_score_space

        try:
            check_score_space(options["score"])
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=param_hint) from None


def check_named_option_keys(options: Mapping[str, Mapping[str, Any]], param_hint: str = "--option") -> None:
    """``NAME.KEY`` options of ``evaluate``: NAME must be a registered method or an evaluation name
    (it need not be in the run, so one list of options serves several runs), and KEY an option of
    the method behind it."""
    from ..evaluation import variants
    from ..methods import REGISTRY

    for name, opts in options.items():
        if name in REGISTRY:
            base = name
        elif variants.is_available(name) and name != variants.RANDOM:
            base = variants.resolve(name)[0]
        else:
            known = [n for n in variants.available() if n != variants.RANDOM]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise click.BadParameter(f"{name!r} is not a method that takes options{hint}; see "
                                     f"`saliencekit evaluate --list`", param_hint=param_hint)
        for key in opts:
            known = accepted_options(base)
            if key not in known:
                raise _unknown_key(key, known, base, param_hint)


def check_metric_option_keys(options: Mapping[str, Mapping[str, Any]], param_hint: str = "--metric-option") -> None:
    """``METRIC.KEY`` options: METRIC must be a registered metric and KEY a keyword of its function
    (other than those the metric fixes)."""
    import inspect

    from ..metrics import registry

    for name, opts in options.items():
        if name not in registry.METRICS:
            raise click.BadParameter(f"unknown metric {name!r}; see `saliencekit evaluate --list`",
                                     param_hint=param_hint)
        spec = registry.METRICS[name]
        params = inspect.signature(spec.fn).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        known = [k for k, p in params.items() if p.default is not p.empty and k not in spec.options]
        for key in opts:
            if key not in known:
                raise _unknown_key(key, known, name, param_hint)


def for_method(options: Mapping[str, Any], accepted: Iterable[str]) -> Dict[str, Any]:
    """The ``options`` one method takes: those among its ``accepted`` options (its spec's
    ``defaults``) and the ``explain`` arguments every method takes (``score``)."""
    keep = set(accepted) | set(EXPLAIN_ARGUMENTS)
    return {k: v for k, v in options.items() if k in keep}


def parse_channels(text: Optional[str], param_hint: str = "--channels") -> Optional[List[int]]:
    """``"0,5,7"`` -> ``[0, 5, 7]``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=param_hint) from None


def resolve_device(device: str, param_hint: str = "--device") -> str:
    """``device``, refused when it is ``cuda`` and this machine has no CUDA device."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint=param_hint)
    return device


# ---- the model option group ----------------------------------------------------------------------

MODEL_FLAGS = {"name": "--model", "weights": "--weights", "labels": "--labels", "input_size": "--input-size",
               "resize": "--resize", "mean": "--mean", "std": "--std", "trust_model_file": "--trust-model-file"}


@dataclass(frozen=True)
class ModelArgs:
    """The model group's values as given on the command line."""

    model: str = "efficientnet-lite0"
    weights: Optional[str] = None
    trust_model_file: bool = False
    labels: Optional[str] = None
    input_size: Optional[int] = None
    resize: Optional[int] = None
    mean: Optional[str] = None
    std: Optional[str] = None


_MODEL_OPTIONS = (
    click.option("--model", default="efficientnet-lite0", show_default=True, metavar="NAME|FILE|MODULE:CALLABLE",
                 help="The classifier: a model name (efficientnet-lite0; torchvision:NAME / timm:NAME when installed), "
                      "a TorchScript file, a torch.export program (.pt2), or package.module:callable returning an "
                      "nn.Module (the current directory is importable)."),
    click.option("--weights", default=None, metavar="FILE",
                 help="A state_dict for the --model architecture, loaded with torch.load(weights_only=True)."),
    click.option("--trust-model-file", is_flag=True,
                 help="Allow --model FILE to be a whole pickled module (torch.save(model)). Unpickling runs code "
                      "from the file: only for files you trust."),
    click.option("--labels", default=None, metavar="FILE",
                 help="Class names: a text file with one name per line, or JSON (a list, or {index: name}). "
                      "Default: ImageNet's for the named ImageNet models, class indices otherwise."),
    click.option("--input-size", default=None, type=POSITIVE,
                 help="Side of the square image the model takes, in pixels (default: 224, or a torch.export "
                      "program's fixed size)."),
    click.option("--resize", default=None, type=POSITIVE,
                 help="Short side the image is resized to before the centre crop (default: 8/7 of the input "
                      "size, 256 for 224)."),
    click.option("--mean", default=None, metavar="R,G,B",
                 help="Per-channel mean the pixels (in [0, 1]) are normalised with (default: ImageNet's "
                      "0.485,0.456,0.406); one number for all channels."),
    click.option("--std", default=None, metavar="R,G,B",
                 help="Per-channel standard deviation of the normalisation (default: ImageNet's "
                      "0.229,0.224,0.225); one number for all channels."),
)


def model_options(fn):
    """Add the model option group to a command; the command receives them as one ``model_args``
    (:class:`ModelArgs`)."""
    fields = ("model", "weights", "trust_model_file", "labels", "input_size", "resize", "mean", "std")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        kwargs["model_args"] = ModelArgs(**{f: kwargs.pop(f) for f in fields})
        return fn(*args, **kwargs)

    for option in reversed(_MODEL_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def _numbers(text: Optional[str], flag: str) -> Optional[List[float]]:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers (R,G,B, or one for all channels), got {text!r}",
                                 param_hint=flag) from None


def _model_error(e: Exception) -> click.BadParameter:
    arg = getattr(e, "argument", None) or str(e).split(":", 1)[0]
    flag = MODEL_FLAGS.get(arg, "--model")
    text = str(e)
    if text.startswith(f"{arg}: "):
        text = text[len(arg) + 2:]
    return click.BadParameter(text, param_hint=flag)


def model_spec(args: ModelArgs):
    """The checked ``ModelSpec`` of the model group (files inspected, labels read, numbers checked;
    nothing loaded). Errors name the option (exit code 2)."""
    from .. import models

    try:
        return models.model_spec(args.model, weights=args.weights, labels=args.labels, input_size=args.input_size,
                                 resize=args.resize, mean=_numbers(args.mean, "--mean"),
                                 std=_numbers(args.std, "--std"), trust_model_file=args.trust_model_file)
    except (ValueError, TypeError) as e:
        raise _model_error(e) from None


def load_model(spec, device: str):
    """``saliencekit.models.load_model(spec)`` on ``device``; errors name the option."""
    from .. import models

    try:
        return models.load_model(spec, device=device)
    except (ValueError, TypeError) as e:
        raise _model_error(e) from None


def model_label(spec) -> str:
    """How a command names the model: what the user wrote for ``--model``."""
    return getattr(spec, "name", None) or str(spec)


def hookable(model) -> bool:
    """Whether layers of ``model`` can be captured (a TorchScript module takes no forward hooks)."""
    import torch

    return not isinstance(model, torch.jit.ScriptModule)


# ---- threads --------------------------------------------------------------------------------------

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MIN_WINDOW_S = 0.2        # shortest look at /proc/stat when guessing how busy the CPUs are


def threads_option(fn):
    return click.option(
        "--threads", default=None, type=POSITIVE,
        help="torch threads. Default: the CPUs this process may use (CPU affinity and cgroup quota) less those "
             "other processes keep busy (measured from /proc/stat at start-up), at least 1; OMP_NUM_THREADS or "
             "MKL_NUM_THREADS, when set, is kept.")(fn)


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the smallest along the cgroup's path), or ``None``."""
    def read(p: Path) -> Optional[str]:
        try:
            return p.read_text().strip()
        except OSError:
            return None

    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    v2 = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    v1 = next((line.split(":", 2)[2] for line in lines
               if len(line.split(":", 2)) == 3 and "cpu" in line.split(":", 2)[1].split(",")), None)
    limits: List[float] = []

    def candidates(rel: Optional[str], bases: Sequence[Path]) -> List[Path]:
        out = []
        for base in bases:
            d = base / (rel or "/").lstrip("/")
            while True:   # the cgroup and its ancestors (inside a container the path may not exist: the root)
                out.append(d)
                if d == base:
                    break
                d = d.parent
        return out

    rootp = Path(root)
    for d in candidates(v2, [rootp]):
        text = read(d / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
                limits.append(int(quota) / int(period))
    for d in candidates(v1, [rootp / "cpu", rootp / "cpu,cpuacct", rootp / "cpuacct,cpu"]):
        q, p = read(d / "cpu.cfs_quota_us"), read(d / "cpu.cfs_period_us")
        if q and p and q.lstrip("-").isdigit() and p.isdigit() and int(q) > 0 and int(p) > 0:
            limits.append(int(q) / int(p))
    return min(limits) if limits else None


def allowed_cpus() -> Tuple[List[int], Optional[float]]:
    """The CPUs this process may run on (its affinity) and its cgroup CPU quota (or ``None``)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    return cpus, cgroup_cpu_limit()


def cpu_snapshot(stat: str = "/proc/stat") -> Optional[Dict[str, Any]]:
    """Per-CPU (busy, total) ticks from /proc/stat and this process's CPU time, or ``None`` where
    /proc/stat is not readable. Two snapshots give how busy other processes kept each CPU."""
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return None
    ticks: Dict[int, Tuple[int, int]] = {}
    for line in lines:
        parts = line.split()
        if not parts or not parts[0].startswith("cpu") or parts[0] == "cpu":
            continue
        try:
            cpu = int(parts[0][3:])
            v = [int(t) for t in parts[1:9]]
        except ValueError:
            continue
        v += [0] * (8 - len(v))
        total = sum(v)                       # user nice system idle iowait irq softirq steal
        ticks[cpu] = (total - v[3] - v[4], total)
    t = os.times()
    return {"time": time.monotonic(), "cpus": ticks, "own": t.user + t.system}


def busy_cpus(before: Optional[Dict[str, Any]], cpus: Sequence[int], after: Optional[Dict[str, Any]] = None) -> float:
    """How many of ``cpus`` other processes kept busy between two snapshots (in CPUs; this
    process's own CPU time is subtracted). Waits until ``MIN_WINDOW_S`` has passed since ``before``."""
    if before is None:
        return 0.0
    if after is None:
        wait = MIN_WINDOW_S - (time.monotonic() - before["time"])
        if wait > 0:
            time.sleep(wait)
        after = cpu_snapshot()
    if after is None:
        return 0.0
    busy = total = 0.0
    for c in cpus:
        if c in before["cpus"] and c in after["cpus"]:
            busy += after["cpus"][c][0] - before["cpus"][c][0]
            total += after["cpus"][c][1] - before["cpus"][c][1]
    present = sum(1 for c in cpus if c in before["cpus"] and c in after["cpus"])
    if total <= 0 or present == 0:
        return 0.0
    per_cpu_ticks = total / present
    seconds = after["time"] - before["time"]
    hz = per_cpu_ticks / seconds if seconds > 0 else 100.0
    own = max(0.0, (after["own"] - before["own"]) * hz)
    return max(0.0, (busy - own) / per_cpu_ticks)


def default_threads(snapshot: Optional[Dict[str, Any]] = None) -> Tuple[int, str]:
    """``(threads, why)``: the CPUs this process may use (affinity, and the cgroup quota rounded
    down) less the CPUs other processes keep busy (rounded to the nearest CPU), at least 1."""
    cpus, quota = allowed_cpus()
    usable = len(cpus)
    why = [f"{len(cpus)} CPU(s) in this process's affinity"]
    if quota is not None:
        usable = min(usable, max(1, math.floor(quota)))
        why.append(f"a cgroup quota of {quota:g} CPU(s)")
    busy = busy_cpus(snapshot if snapshot is not None else cpu_snapshot(), cpus)
    free = len(cpus) - busy
    n = max(1, min(usable, math.floor(free + 0.5)))
    if busy >= 0.05:
        why.append(f"{busy:.1f} kept busy by other processes")
    return n, ", ".join(why)


def apply_threads(threads: Optional[int], snapshot: Optional[Dict[str, Any]] = None) -> Tuple[int, str]:
    """Set torch's intra-op threads: ``threads`` when given; else, when ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` is set, torch's count from it; else :func:`default_threads`. Returns
    ``(count, why)``."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
        return threads, "--threads"
    env = next((k for k in THREAD_ENV if os.environ.get(k, "").strip()), None)
    if env is not None:
        return torch.get_num_threads(), f"{env}={os.environ[env].strip()}"
    n, why = default_threads(snapshot)
    torch.set_num_threads(n)
    return n, why


# ---- output folder --------------------------------------------------------------------------------

class OutputFolder:
    """Files of one command, written to a temporary folder beside ``--out`` (in the nearest existing
    ancestor, so moving is a rename on one file system) and moved into ``--out`` by :meth:`commit`;
    :meth:`discard` (also on leaving a ``with`` block without a commit) removes the temporary folder.
    Files already in ``--out`` are replaced only by files of the same name."""

    def __init__(self, out: Path, param_hint: str = "--out"):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise click.BadParameter(f"{self.out} exists and is not a folder", param_hint=param_hint)
        anchor = self.out.absolute()
        while not anchor.exists():
            anchor = anchor.parent
        if not anchor.is_dir():
            raise click.BadParameter(f"{anchor} is not a folder", param_hint=param_hint)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name or 'out'}.partial-", dir=anchor))
        except OSError as e:
            raise click.BadParameter(f"cannot write in {anchor} ({e.strerror})", param_hint=param_hint) from None

    def commit(self, last: Sequence[str] = ()) -> List[Path]:
        """Move every file into ``--out`` (the names in ``last`` after the others); the files moved."""
        files = sorted(p for p in self.tmp.rglob("*") if p.is_file())
        files.sort(key=lambda p: str(p.relative_to(self.tmp)) in last)
        moved = []
        for p in files:
            dest = self.out / p.relative_to(self.tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
            moved.append(dest)
        self.discard()
        return moved

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


__all__ = ["EXPLAIN_ARGUMENTS", "ModelArgs", "OutputFolder", "accepted_options", "apply_threads", "busy_cpus",
           "cgroup_cpu_limit", "check_metric_option_keys", "check_named_option_keys", "check_option_keys",
           "cpu_snapshot", "default_threads", "for_method", "hookable", "load_model", "model_label", "model_options",
           "model_spec", "parse_channels", "parse_named_options", "parse_options", "parse_value", "resolve_device",
           "threads_option"]
