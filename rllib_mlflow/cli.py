"""The `rllib-mlflow` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rllib_mlflow.errors import RLlibMLflowError
from rllib_mlflow.extras import missing_extra


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args) or 0
    except ModuleNotFoundError as error:  # the light install lacks an extra
        extra = "evaluate" if args.command == "evaluate" else "tune"
        print(f"rllib-mlflow: error: {missing_extra(error, args.command, extra)}", file=sys.stderr)
        return 2
    except (RLlibMLflowError, FileExistsError, ValueError) as error:
        print(f"rllib-mlflow: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllib-mlflow",
        description="Export RLlib checkpoints as standard models and register them in MLflow.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    export = commands.add_parser("export", help="export a checkpoint to SavedModel, .h5, ONNX")
    export.add_argument("checkpoint", help="checkpoint directory or URI (s3://...)")
    export.add_argument("-o", "--output", required=True, help="output directory")
    export.add_argument(
        "--formats", default="saved_model,h5,onnx", help="comma-separated (default: all)"
    )
    export.add_argument("--module-id", help="only this module of a multi-agent checkpoint")
    export.add_argument("--no-verify", action="store_true", help="skip the parity check")
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    export.set_defaults(run=_export)

    sync = commands.add_parser(
        "sync", help="register what a Tune experiment left unregistered (journal and disk)"
    )
    sync.add_argument("experiment_dirs", nargs="+", metavar="EXPERIMENT_DIR")
    sync.add_argument("--name", help="registered model name (default: from the journal)")
    sync.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    sync.set_defaults(run=_sync)

    register = commands.add_parser(
        "register", help="backfill: register the checkpoints of an experiment, trial or checkpoint"
    )
    register.add_argument("path", help="experiment directory, trial directory or checkpoint")
    register.add_argument("--name", required=True, help="registered model name")
    register.add_argument("--tracking-uri")
    register.set_defaults(run=_register)

    evaluate = commands.add_parser(
        "evaluate", help="play seeded episodes with each version (no Ray) and compare them"
    )
    evaluate.add_argument("name")
    evaluate.add_argument("--env", help="gymnasium env id (default: the versions' env_id tag)")
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--versions", nargs="*", help="numbers or aliases (default: all)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--workers", type=int, help="processes (default: one per core)")
    evaluate.add_argument("--move-alias", action="store_true", help="point eval-best at the best")
    evaluate.add_argument("--tracking-uri")
    evaluate.set_defaults(run=_evaluate)

    versions = commands.add_parser("versions", help="list the versions of a registered model")
    versions.add_argument("name")
    versions.add_argument("--json", action="store_true", help="machine-readable output")
    versions.add_argument("--tracking-uri")
    versions.set_defaults(run=_versions)

    prune = commands.add_parser("prune", help="delete versions outside a retention policy")
    prune.add_argument("name")
    prune.add_argument("--keep-last", type=int, help="keep the N highest training iterations")
    prune.add_argument("--keep-best", type=int, help="keep the K best by the best metric")
    prune.add_argument("--delete-artifacts", action="store_true", help="delete their files too")
    prune.add_argument("--dry-run", action="store_true", help="only print what would go")
    prune.add_argument("--tracking-uri")
    prune.set_defaults(run=_prune)
    return parser


def _export(args: argparse.Namespace) -> int:
    from rllib_mlflow.export import export_checkpoint

    exported = export_checkpoint(
        args.checkpoint,
        args.output,
        formats=args.formats,
        module_id=args.module_id,
        verify=not args.no_verify,
        overwrite=args.overwrite,
    )
    for policy in exported:
        parity = policy.parity
        summary = "not verified" if parity is None else f"max diff {parity['max_abs_diff']:.2e}"
        print(f"{policy.module_id}: {policy.path} ({', '.join(policy.formats)}; {summary})")
    print(json.dumps({p.module_id: str(p.path) for p in exported}))
    return 0


def _sync(args: argparse.Namespace) -> int:
    from rllib_mlflow.sync import sync_experiment

    failures = 0
    for directory in args.experiment_dirs:
        report = sync_experiment(directory, args.name, tracking_uri=args.tracking_uri)
        print(f"{directory}: {report.summary()}")
        for key, error in report.failed.items():
            print(f"  failed {key}: {error}", file=sys.stderr)
        failures += len(report.failed)
    return 1 if failures else 0


def _register(args: argparse.Namespace) -> int:
    from rllib_mlflow.sync import register_path

    report = register_path(args.path, args.name, tracking_uri=args.tracking_uri)
    print(f"{args.path}: {report.summary()}")
    for key, error in report.failed.items():
        print(f"  failed {key}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


def _evaluate(args: argparse.Namespace) -> int:
    from rllib_mlflow.evaluate import evaluate

    evaluate(
        args.name,
        args.env,
        episodes=args.episodes,
        versions=args.versions,
        seed=args.seed,
        tracking_uri=args.tracking_uri,
        workers=args.workers,
        move_alias=args.move_alias,
    )
    return 0


def _versions(args: argparse.Namespace) -> int:
    from rllib_mlflow import registry

    mlflow_client = registry.client(args.tracking_uri)
    rows = registry.version_rows(mlflow_client, args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["version", "aliases", "trial", "iteration", "env_steps", "return", "eval_return"]
    columns += ["formats", "created"]
    table = [[str(row[c] if row[c] is not None else "") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return 0


def _prune(args: argparse.Namespace) -> int:
    from rllib_mlflow import registry
    from rllib_mlflow.retention import prune

    plan = prune(
        registry.client(args.tracking_uri),
        args.name,
        args.keep_last,
        args.keep_best,
        delete_artifacts=args.delete_artifacts,
        dry_run=args.dry_run,
    )
    verb = "would delete" if args.dry_run else "deleted"
    for version in plan.delete:
        iteration = version.tags.get("training_iteration", "?")
        print(f"{verb} version {version.version} (iteration {iteration})")
    for version in plan.keep:
        print(f"kept version {version.version} ({plan.reasons[str(version.version)]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
