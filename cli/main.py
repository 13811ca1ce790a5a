"""``factory-inspect``: fit, evaluate, serve and demo (update and rollback: ``cli.update``).

The command names, flags and meanings of ``fit``, ``evaluate`` and ``serve`` are a
stable contract (see README). Long work shows progress bars on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("factory_inspect")


def _progress(desc: str, total: int) -> tqdm:
    return tqdm(total=total, desc=f"{desc:>10}", unit="it", leave=True, file=sys.stderr, dynamic_ncols=True)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_pairs(items: list[str], option: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` items -> ``{key: value}``, each value read as JSON when it is JSON, else text."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{option} expects key=value, got {item!r}")
        pairs[key.strip()] = _parse_value(value)
    return pairs


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def load_config(config_file: str | None, overrides: list[str]):
    """A ``FitConfig`` from an optional JSON file plus ``--set key=value`` overrides."""
    from model.method.config import FitConfig

    config = FitConfig.from_dict(json.loads(Path(config_file).read_text())) if config_file else FitConfig()
    pairs = parse_pairs(overrides)
    return config.with_overrides(pairs) if pairs else config


def cmd_fit(args: argparse.Namespace) -> int:
    from model.jobs.dataset import list_defects
    from model.jobs.host import keep_freed_memory
    from model.jobs.publishing import fit_into
    from model.runtime.process import configure_device

    config = load_config(args.config, args.set)
    keep_freed_memory()  # process-wide: glibc keeps freed memory for the next training step
    configure_device(args.device)  # calibrate with the math that serves (TF32 off on CUDA)
    defects = list_defects(args.defects) if args.defects else ()
    report, location = fit_into(args.data, args.category, args.artifacts, config=config, device=args.device,
                                progress=_progress, defects=defects, skip_bad_images=args.skip_bad_images)
    print(f"artifact   {location} -> {report.artifact_id}")
    print(f"images     {report.n_fit} fit, {report.n_holdout} held out and {report.n_defects} labelled defects "
          "for calibration")
    for line in report.skipped:
        print(f"skipped    {line}")
    _print_selection(report.selection)
    print(f"psg        {'on' if report.psg else 'off'}")
    if report.psg_selection:
        left_out = ", ".join(report.psg_selection["left_out"])
        print(f"           chosen by the same rule, without the {left_out} defects PSG trains on:")
        _print_table(report.psg_selection)
    _print_head(report.head)
    _print_thresholds(report.thresholds, report.with_defects)
    print(f"bank       {report.bank_size} vectors (of {report.n_patches} patches)")
    print(f"size       {report.artifact_bytes / 1e6:.1f} MB")
    print("seconds    " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    return 0


def _print_table(selection: dict) -> None:
    """A choice's validation table (candidate -> figures), the chosen row starred: the synthetic
    figures, the labelled defects' sensitivity (when the fit has some), the sensitivity the rule
    weighs, and the share of nuisance copies flagged per strength."""
    table = selection.get("candidates") or {}
    if not table:
        return
    first = next(iter(table.values()))
    strengths = list(first.get("nuisance_far", {}))
    labelled = "sensitivity_labelled" in first
    print(f"           {'candidate':<16} {'image':>7} {'pixel':>7} {'AU-PRO':>7} "
          + (f"{'real':>7} " if labelled else "") + f"{'sens.':>7}  flagged at strength "
          + " / ".join(strengths))
    for name, row in table.items():
        mark = "*" if name == selection["chosen"] else " "
        real = f"{_fmt(row['sensitivity_labelled']):>7} " if labelled else ""
        print(f"         {mark} {name:<16} {_fmt(row['image_auroc']):>7} {_fmt(row['pixel_auroc']):>7} "
              f"{_fmt(row['au_pro']):>7} {real}{_fmt(row['sensitivity']):>7}  "
              + " / ".join(f"{row['nuisance_far'][g]:.2f}" for g in strengths))
    for name, order in selection.get("rankings", {}).items():
        print(f"           ranked by the {name} defects: {' > '.join(order)}")


def _print_head(record: dict | None) -> None:
    """The defect head: its weight, chosen on held-out labelled defects, or why there is none."""
    if not record:
        return
    if "skipped" in record:
        print(f"head       off: {record['skipped']}")
        return
    print(f"head       weight {record['weight']:g} (0: off), abnormal bank "
          f"{record['abnormal_bank']} cells; chosen on held-out labelled defects by the same rule:")
    _print_table(record)
    dropped = [w for w in record["candidates"] if w not in record.get("kept_floor", record["candidates"])]
    if dropped:
        print("           not eligible, they cost the synthetic families their heads did not train on, or "
              f"a type the head does not recognise (types no shot shows): {', '.join(dropped)}")
    if record.get("training"):
        level = record["training"]["level"]
        where = (f"by its whole probability (its level on good parts, p = {level:.3f}, unused)"
                 if record.get("level") == "none" else f"only above its level on good parts, p = {level:.3f}")
        print(f"           boosts {where}")
    if record.get("note"):
        print(f"           {record['note']}")


def _print_thresholds(thresholds, with_defects: dict | None) -> None:
    if thresholds is None:
        return
    print(f"thresholds image {thresholds.image:.4g}, pixel {thresholds.pixel:.4g} ({thresholds.method})")
    if with_defects:
        far, f1 = with_defects["far"], with_defects["f1"]
        pixel_f1 = f" (F1 {f1['pixel_f1']:.3f})" if f1["pixel_f1"] is not None else ""
        print(f"           false-alarm target on the goods: image {far['image']:.4g}, pixel {far['pixel']:.4g}"
              f"{'  <- used' if with_defects['policy'] == 'far' else ''}")
        print(f"           best F1 with the labelled defects: image {f1['image']:.4g} (F1 {f1['image_f1']:.3f}), "
              f"pixel {f1['pixel']:.4g}{pixel_f1}{'  <- used' if with_defects['policy'] == 'f1' else ''}")


def _print_selection(selection: dict | None) -> None:
    """The scoring choice: mode, the candidates' validation table, and any warning."""
    if not selection:
        return
    print(f"scoring    {selection['chosen'] or 'as configured'} ({selection['mode']})")
    if selection.get("fallback"):
        print(f"           {selection['fallback']}")
    _print_table(selection)
    if selection.get("warning"):
        print(f"WARNING    {selection['warning']}")


def cmd_publish(args: argparse.Namespace) -> int:
    from model.jobs.publishing import publish_artifact

    artifact_id = publish_artifact(args.artifact, args.to)
    print(f"published  {artifact_id} to {args.to.rstrip('/')}")
    return 0


def cmd_fit_many(args: argparse.Namespace) -> int:
    from cluster.fit_many import fit_many, print_report

    categories = [c for c in args.categories.split(",") if c] if args.categories else None
    results = fit_many(args.data_root, args.artifacts, categories, config=load_config(args.config, args.set),
                       address=args.address, num_cpus=args.cpus_per_fit)
    print_report(results)
    return 0 if all(r.ok for r in results) else 1


def cmd_cluster(args: argparse.Namespace) -> int:
    from cluster import control
    from cluster.deployment import ClusterArgs

    if args.action == "shutdown":
        control.shutdown(args.address)
        print("serve shut down")
        return 0
    if not args.artifacts:
        raise ValueError("cluster deploy needs --artifacts")
    settings = parse_pairs(args.setting, "--setting")
    autoscaling = {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
                   "target_ongoing_requests": args.target_ongoing_requests}
    cluster_args = ClusterArgs(artifacts=args.artifacts, artifact_cache=args.artifact_cache,
                               max_categories_per_replica=args.max_categories, settings=settings,
                               num_replicas=args.replicas, autoscaling=autoscaling, replica_cpus=args.replica_cpus,
                               replica_gpus=args.replica_gpus)
    token = control.deploy(args.address, cluster_args, args.http_host, args.http_port, reload=args.reload)
    print(f"deployed {control.APP_NAME} on http://{args.http_host}:{args.http_port} "
          f"(args {cluster_args.fingerprint()}, reload token {token})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.jobs.evaluate import evaluate
    from model.runtime.inspector import Inspector
    from model.runtime.process import configure_device

    configure_device(args.device)
    inspector = Inspector.from_artifact(args.artifact, args.device)
    output = Path(args.output)
    plots = Path(args.plots) if args.plots else output.with_name(output.stem + "_plots")
    report = evaluate(
        inspector, args.data, output_dir=None if args.no_plots else plots, eval_size=args.resolution,
        batch_size=args.batch_size, progress=_progress,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, allow_nan=False))

    print(f"image AUROC {_fmt(report['image_auroc'])}  pixel AUROC {_fmt(report['pixel_auroc'])}  "
          f"AU-PRO {_fmt(report['au_pro'])}  (at {report['resolution']} px, {report['backbone']})")
    if report["n_excluded"]:
        print(f"left out   {report['n_excluded']} test images the artifact was fitted with (fit --defects)")
    print(f"wrote {output}" + ("" if args.no_plots else f" and plots in {plots}"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {"artifacts": args.artifacts, "artifact_cache": args.artifact_cache, "device": args.device,
                 "runtime": args.runtime, "precision": args.precision}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    # h11 and asyncio whatever else is installed (the cluster extra brings httptools and uvloop):
    # the request-size limits and the shutdown measured and tested are those of h11 and asyncio.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", timeout_keep_alive=5,
                http="h11", loop="asyncio")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo

    return run_demo(Path(args.workdir), data=args.data, category=args.category, progress=_progress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factory-inspect", description="Visual inspection: fit, evaluate, serve.")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="build a category artifact from <data>/train/good")
    f.add_argument("--data", required=True, help="category folder in MVTec layout")
    f.add_argument("--category", required=True)
    f.add_argument("--artifacts", required=True,
                   help="artifacts root (writes <root>/<category>), or s3://bucket/prefix (publishes a new version)")
    f.add_argument("--skip-bad-images", action="store_true",
                   help="leave out (and list) train/good images that do not decode instead of stopping")
    f.add_argument("--defects", help="labelled defect images, as <dir>/test/<type>/*.png with optional "
                   "<dir>/ground_truth/<type>/<stem>_mask.png: F1 thresholds, and psg.enabled=auto chooses with them")
    f.add_argument("--device", default="cpu")
    f.add_argument("--config", help="fit config JSON (see model/method/config.py)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set nns.coreset_ratio=0.02 --set gaussian.enabled=false")
    f.set_defaults(func=cmd_fit)

    pub = sub.add_parser("publish", help="upload a fitted artifact to s3://bucket/prefix (version, then pointer)")
    pub.add_argument("--artifact", required=True, help="an artifact folder, <root>/<category>")
    pub.add_argument("--to", required=True, help="s3://bucket/prefix")
    pub.set_defaults(func=cmd_publish)

    m = sub.add_parser("fit-many", help="fit several categories as Ray tasks (a failed one does not stop the others)")
    m.add_argument("--data-root", required=True, help="a folder of category folders (MVTec layout each)")
    m.add_argument("--categories", help="comma list (default: every sub-folder with train/good)")
    m.add_argument("--artifacts", required=True, help="artifacts root or s3://bucket/prefix, as for fit")
    m.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray started for the job)")
    m.add_argument("--cpus-per-fit", type=float, default=1.0, help="CPUs each fit task reserves")
    m.add_argument("--config", help="fit config JSON for every category")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for fit")
    m.set_defaults(func=cmd_fit_many)

    c = sub.add_parser("cluster", help="deploy the server on a running Ray cluster (Ray Serve), or shut it down")
    c.add_argument("action", choices=["deploy", "shutdown"])
    c.add_argument("--address", required=True, help="the Ray cluster's GCS address, host:port")
    c.add_argument("--artifacts", help="s3://bucket/prefix (or a folder every node shares)")
    c.add_argument("--artifact-cache", default=None, help="local cache of fetched artifacts on each node")
    c.add_argument("--http-host", default="127.0.0.1")
    c.add_argument("--http-port", type=int, default=8000)
    c.add_argument("--max-categories", type=int, default=4, help="categories loaded per replica (LRU beyond)")
    c.add_argument("--replicas", type=int, default=None, help="a fixed replica count (default: autoscaling)")
    c.add_argument("--min-replicas", type=int, default=1)
    c.add_argument("--max-replicas", type=int, default=4)
    c.add_argument("--target-ongoing-requests", type=float, default=8)
    c.add_argument("--replica-cpus", type=float, default=1.0)
    c.add_argument("--replica-gpus", type=float, default=0.0, help="> 0: replicas run on CUDA")
    c.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a server setting for every replica, e.g. --setting max_batch_size=8")
    c.add_argument("--reload", action="store_true",
                   help="same arguments, new user_config: replicas reload changed categories in place")
    c.set_defaults(func=cmd_cluster)

    e = sub.add_parser("evaluate", help="image AUROC, pixel AUROC, AU-PRO on <data>/test")
    e.add_argument("--data", required=True)
    e.add_argument("--artifact", required=True, help="an artifact folder, <root>/<category>")
    e.add_argument("--output", required=True, help="JSON report path")
    e.add_argument("--device", default="cpu")
    e.add_argument("--plots", help="folder for PNG plots (default: <output>_plots)")
    e.add_argument("--no-plots", action="store_true")
    e.add_argument("--resolution", type=int, default=None, help="evaluation resolution (default: model input)")
    e.add_argument("--batch-size", type=int, default=8)
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("serve", help="run the inspection server")
    s.add_argument("--artifacts", default=None, help="artifacts root, or s3://bucket/prefix")
    s.add_argument("--artifact-cache", default=None, help="local cache of artifacts fetched from s3://")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--device", default=None, choices=["cpu", "cuda"])
    s.add_argument("--runtime", default=None, choices=["torch", "onnxruntime"],
                   help="feature-path runtime (default: torch, or FACTORY_INSPECT_RUNTIME)")
    s.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                   help="CUDA feature-path precision (default: fp32, or FACTORY_INSPECT_PRECISION)")
    s.set_defaults(func=cmd_serve)

    from cli.update import add_parsers as add_update_parsers

    add_update_parsers(sub)

    d = sub.add_parser("demo", help="generate data (or use --data), fit, serve, inspect one image")
    d.add_argument("--workdir", default="demo-output")
    d.add_argument("--data", default=None, help="an MVTec-style category folder instead of generated data")
    d.add_argument("--category", default="demo")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        from model.runtime.process import set_torch_threads

        set_torch_threads(args.threads)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        log.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
