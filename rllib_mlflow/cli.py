"""The `rllib-mlflow` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rllib_mlflow.errors import RLlibMLflowError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args) or 0
    except (RLlibMLflowError, FileExistsError, ValueError) as error:
        print(f"rllib-mlflow: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllib-mlflow",
        description="Export RLlib checkpoints as standard models and register them in MLflow.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

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


if __name__ == "__main__":
    sys.exit(main())
