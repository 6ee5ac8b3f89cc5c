"""Ablation study: every design component switched in turn from the default config.

    python -m bench.ablation --data_path ../shared/data/mosi_bclstm_dev.pkl --output_dir runs/ablation
    python -m bench.ablation --variants default with_aecf_gate --seeds 1111 --workers 1   # a subset

Each variant is one ``run_experiment`` (all seeds) in ``OUTPUT_DIR/<variant>/``; finished variants
are reused (no process starts for them), so an interrupted study continues where it stopped. A
variant folder holding a run started with other settings (another --data_path, --epochs, ...) is
refused before anything runs: pass the same flags, another --output_dir, or --overwrite to train
every variant afresh. Variants run in ``--workers`` spawned processes with one torch thread each (a
script that calls ``main`` needs the usual ``if __name__ == "__main__":`` guard); after a variant's
error or Ctrl-C no other variant starts. Writes ``ablation.md`` and ``ablation.csv``: test mean
Acc-2 / F1 (non-0) and ECE over the missing rates, over the seven subsets, Acc-2 at p = 0, and
ECE at p = 0.5, mean ± std over seeds, plus the validation robustness (what selection sees).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd

from training.atomic import atomic_open
from training.cli import run_reporting_errors
from training.config import ArgumentParser, Config, HelpFormatter, add_config_arguments, fields_in
from training.errors import OutputError, writing
from training.run import RunExistsError, check_startable, resume_conflicts

# the training flags the study takes (every variant starts from them)
CONFIG_FLAGS = (*fields_in("data", "model", "loss", "train", "eval"), "output_dir")

VARIANTS: dict[str, dict] = {
    "default": {},
    "no_variational_sampling": {"variational": False},
    "no_vae_loss": {"use_vae": False},
    "no_infonce": {"use_contrastive": False},
    "with_unimodal_probes": {"unimodal_weight": 1.0},  # off by default (see README)
    "plain_uncertainty_fusion": {"use_gated_fusion": False},
    "no_proxy_attention": {"use_proxy_attention": False},
    "with_aecf_gate": {"use_aecf": True},  # off by default (see README)
    "no_focal_label_smoothing": {"focal_gamma": 0.0, "label_smoothing": 0.0},
    "no_train_missing": {"train_missing_rate": 0.0},
    "fixed_train_missing_0.5": {"train_missing_rate": 0.5, "train_missing_schedule": "fixed"},
    "with_distillation": {"distill_weight": 1.0},  # off by default (see README)
    "no_calibration": {"calibrate": False, "calibrate_score": False},
    "lstm_encoder": {"encoder": "lstm"},
    "cfc_encoder": {"encoder": "cfc"},  # closed-form continuous-time cells (ncps)
    # test-time adaptation (off by default, see README): the same trained weights as `default`
    "tta_tent_norm": {"tta": "tent", "tta_params": "norm"},
    "tta_tent_fusion": {"tta": "tent", "tta_params": "fusion"},
    "tta_tent_norm+fusion": {"tta": "tent", "tta_params": "norm+fusion"},
    "tta_tent_norm_5x1e-2": {"tta": "tent", "tta_params": "norm", "tta_steps": 5, "tta_lr": 1e-2},
    "tta_tent_norm+fusion_5x1e-2": {"tta": "tent", "tta_params": "norm+fusion", "tta_steps": 5, "tta_lr": 1e-2},
}


_IN_WORKER = False  # set in the pool's processes (_worker_start)


def _worker_start() -> None:
    """An idle pool process ignores Ctrl-C (meant for the running variants and the study): interrupted
    there, it would break the pool, which then terminates the running variants mid-checkpoint."""
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_variant(args: tuple[str, dict, dict]) -> str:
    import torch

    from training.run import run_experiment

    name, base, overrides = args
    if _IN_WORKER:  # a running variant stops on Ctrl-C, keeping its checkpoints
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        torch.set_num_threads(1)
        cfg = Config(**{**base, **overrides})
        cfg.validate()
        if needs_run(cfg):
            run_experiment(cfg)
    finally:
        if _IN_WORKER:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return name


def needs_run(cfg: Config) -> bool:
    """Whether the variant run of ``cfg`` must train: always with ``overwrite``; otherwise unless its
    folder holds a finished run of the same seeds (given more seeds it resumes; the others are read back)."""
    out = Path(cfg.output_dir)
    done = saved_settings(out) if (out / "metrics.json").exists() else None
    return cfg.overwrite or done is None or done.get("seeds") != cfg.seeds


def pool_context() -> multiprocessing.context.BaseContext:
    """How the variants' processes start: spawned, never forked. A child forked from a process that
    has asked about CUDA at all (``torch.cuda.is_available``, which ``check_startable`` calls, already
    counts) cannot use CUDA: "Cannot re-initialize CUDA in forked subprocess"."""
    return multiprocessing.get_context("spawn")


def saved_settings(out: Path) -> dict | None:
    """The settings the run in ``out`` was started with: its metrics.json ``config`` once finished,
    else its config.json; None when ``out`` holds no run yet."""
    for name, key in (("metrics.json", "config"), ("config.json", None)):
        path = out / name
        if not path.exists():
            continue
        try:
            saved = json.loads(path.read_text())
            saved = saved.get(key) if key else saved
        except (OSError, ValueError, AttributeError) as err:
            saved, reason = None, str(err)
        else:
            reason = f"it holds no settings{f' ({key!r})' if key else ''}"
        if not isinstance(saved, dict):
            raise RunExistsError(f"cannot read the settings of {out} from {path} ({reason}); pass --overwrite to "
                                 "train the variants afresh, or choose another --output_dir")
        return saved
    return None


def check_variants(jobs: list[tuple[str, dict, dict]], overwrite: bool) -> None:
    """Refuse (before anything runs) a variant folder that is a file, or that holds a run started with
    other settings than this invocation would run there (unless ``overwrite``)."""
    for name, base, overrides in jobs:
        out = Path(overrides["output_dir"])
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} (variant {name}) is a file; move it away, or choose another --output_dir")
        saved = None if overwrite else saved_settings(out)
        cfg = Config(**{**base, **overrides})
        changed = resume_conflicts(saved, cfg) if saved is not None else []
        dropped = [s for s in (saved or {}).get("seeds", []) if s not in cfg.seeds]
        if dropped:  # its results would lose them
            changed.append(f"seeds {saved['seeds']} -> {cfg.seeds}")
        if changed:
            raise RunExistsError(
                f"{out} holds a run of variant {name} with other settings ({'; '.join(changed[:5])}"
                f"{'; ...' if len(changed) > 5 else ''}); rerun with the same flags, choose another --output_dir, "
                "or pass --overwrite to train every variant afresh")


def _seed_values(out: Path, split: str = "test") -> dict[str, list[float]]:
    """Per-seed summaries from each seed's result.json."""
    vals: dict[str, list[float]] = {}
    for res_path in sorted(out.glob("seed_*/result.json")):
        res = json.loads(res_path.read_text())[split]
        rates, subsets = res["missing_rate"], res["subsets"]
        row = {
            "seed": int(res_path.parent.name.removeprefix("seed_")),
            "acc2_rates": np.mean([m["acc2_non0"] for m in rates.values()]),
            "f1_rates": np.mean([m["f1_non0"] for m in rates.values()]),
            "ece_rates": np.mean([m["ece"] for m in rates.values()]),
            "acc2_subsets": np.mean([m["acc2_non0"] for m in subsets.values()]),
            "f1_subsets": np.mean([m["f1_non0"] for m in subsets.values()]),
            "ece_subsets": np.mean([m["ece"] for m in subsets.values()]),
            "acc2_p0": rates["0.0"]["acc2_non0"] if "0.0" in rates else np.nan,
            "ece_p0.5": rates["0.5"]["ece"] if "0.5" in rates else np.nan,
        }
        for k, v in row.items():
            vals.setdefault(k, []).append(float(v))
    return vals


def _paired(values: dict[str, list[float]], base: dict[str, list[float]], key: str) -> tuple[float, float]:
    """Mean and standard error of ``values[key] - base[key]`` over the seeds both have."""
    mine, theirs = dict(zip(values["seed"], values[key])), dict(zip(base["seed"], base[key]))
    diff = np.array([mine[s] - theirs[s] for s in mine if s in theirs])
    if len(diff) < 2:
        return float(diff.mean()) if len(diff) else np.nan, np.nan
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def summarise(root: Path, names: list[str]) -> pd.DataFrame:
    """One row per finished variant: test means and stds over seeds, the validation robustness,
    and the seed-paired differences from ``default`` (when it is there) with their standard errors."""
    finished = [n for n in names if (root / n / "metrics.json").exists()]
    values = {n: (_seed_values(root / n, "test"), _seed_values(root / n, "valid")) for n in finished}
    rows = []
    for name in finished:
        test, valid = values[name]
        row = {"variant": name, "seeds": len(test["acc2_rates"]),
               "valid_f1_rates": float(np.mean(valid["f1_rates"]))}
        for k, v in test.items():
            if k != "seed":
                row[k] = float(np.mean(v))
                row[f"{k}_std"] = float(np.std(v))
        if "default" in values:
            row["d_valid_f1_rates"], row["d_valid_f1_rates_se"] = _paired(valid, values["default"][1], "f1_rates")
            row["d_acc2_rates"], row["d_acc2_rates_se"] = _paired(test, values["default"][0], "acc2_rates")
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    cols = [("acc2_rates", "Acc-2 rates"), ("f1_rates", "F1 rates"), ("ece_rates", "ECE rates"),
            ("acc2_subsets", "Acc-2 subsets"), ("f1_subsets", "F1 subsets"), ("acc2_p0", "Acc-2 p=0"),
            ("ece_p0.5", "ECE p=0.5")]
    paired = "d_acc2_rates" in df.columns
    labels = [label for _, label in cols] + (["Δ valid F1 rates", "Δ Acc-2 rates"] if paired else [])
    lines = ["| variant | valid F1 rates | " + " | ".join(labels) + " |",
             "| --- | --- | " + " | ".join("---" for _ in labels) + " |"]
    for _, r in df.iterrows():
        cells = []
        for key, _ in cols:
            scale, fmt = (1, "{:.3f}") if key.startswith("ece") else (100, "{:.1f}")
            cells.append(f"{fmt.format(scale * r[key])} ± {fmt.format(scale * r[key + '_std'])}")
        if paired:
            cells += [f"{100 * r[k]:+.1f}" + (f" ± {100 * r[k + '_se']:.1f}" if np.isfinite(r[k + "_se"]) else "")
                      for k in ("d_valid_f1_rates", "d_acc2_rates")]  # one seed: no standard error
        lines.append(f"| {r['variant']} | {100 * r['valid_f1_rates']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        "\n\nTest split, mean ± std over seeds. 'rates': mean over the random missing rates; 'subsets':"
        " mean over T, A, V, TA, TV, AV, TAV; accuracies and F1 non-0 in %. 'valid F1 rates' is the"
        " validation robustness (mean F1 non-0 over the rates), the number model selection can see."
        + (" Δ: difference from `default`, paired by seed, ± its standard error." if paired else "") + "\n")


def build_parser() -> argparse.ArgumentParser:
    """Every training flag (the base config of all variants; a variant's own settings win), the
    output folder, the variants and the workers."""

    class Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
        """The project's help layout, keeping the description's line breaks."""

    parser = ArgumentParser(prog="python -m bench.ablation", description=__doc__, formatter_class=Formatter,
                            usage="%(prog)s [--variants NAME ...] [--workers N] [training flags]")
    add_config_arguments(parser, CONFIG_FLAGS)
    parser.set_defaults(output_dir="runs/ablation", eval_frame_missing_rates=[0.0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    parser.add_argument("--overwrite", action="store_true",
                        help="train every variant afresh, replacing its run already in --output_dir (default: "
                             "reuse finished variants and continue interrupted ones, if their settings match)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.output_dir:
        parser.error("--output_dir is empty; give the folder for the study")
    base = {n: getattr(args, n) for n in CONFIG_FLAGS if n != "output_dir"}
    base.update(quiet=True, tensorboard=False, resume=not args.overwrite, overwrite=args.overwrite,
                output_dir=args.output_dir)
    try:
        cfg = Config(**base)
        cfg.validate()
        check_startable(cfg)  # a missing data file or card: before any variant's folder
    except ValueError as err:
        parser.error(str(err))
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    root = Path(args.output_dir)
    names = {f.name for f in dataclasses.fields(Config)}
    jobs = []
    for name in args.variants:
        assert set(VARIANTS[name]) <= names, name
        jobs.append((name, base, {**VARIANTS[name], "output_dir": str(root / name)}))

    def prepare() -> None:  # a folder that cannot hold the study, or a variant run with other settings
        if root.exists() and not root.is_dir():
            raise OutputError(f"--output_dir {root} is a file; choose a folder")
        check_variants(jobs, args.overwrite)
        with writing(root):
            root.mkdir(parents=True, exist_ok=True)

    def run_variants() -> None:  # a variant's user error (e.g. an unreadable data file) is one line
        todo = [job for job in jobs if needs_run(Config(**{**job[1], **job[2]}))]
        for name, _, _ in jobs:
            if all(name != job[0] for job in todo):
                print(f"reused {name} (finished with these settings)", file=sys.stderr, flush=True)
        if not todo:
            return
        # one variant per free process, none queued beyond: after an error or an interrupt (Ctrl-C reaches
        # the processes too) the running variants stop or finish, and no other variant starts
        queue = list(todo)
        with ProcessPoolExecutor(max_workers=min(args.workers, len(todo)), mp_context=pool_context(),
                                 initializer=_worker_start) as pool:
            running: set = set()
            while queue or running:
                while queue and len(running) < args.workers:
                    running.add(pool.submit(_run_variant, queue.pop(0)))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                failed = [f for f in done if f.exception() is not None]
                for future in done:
                    if future not in failed:
                        print(f"finished {future.result()}", file=sys.stderr, flush=True)
                if failed:  # the running variants finish (their runs stay usable); no other starts
                    raise failed[0].exception()

    def write_summary() -> str:
        df = summarise(root, args.variants)
        md = to_markdown(df)
        with writing(root):
            with atomic_open(root / "ablation.csv") as fh:
                df.to_csv(fh, index=False)
            with atomic_open(root / "ablation.md") as fh:
                fh.write(md)
        return md

    for step in (prepare, run_variants):
        status = run_reporting_errors(step, "interrupted")[1]
        if status:
            return status
    md, status = run_reporting_errors(write_summary, "interrupted")
    if status:
        return status
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
