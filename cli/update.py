"""``factory-inspect update`` and ``rollback``: the line teaches a category, and takes it back.

    factory-inspect update --artifact artifacts/bottle --goods confirmed/good [--defects confirmed]
    factory-inspect rollback --artifact artifacts/bottle

``--artifact`` is ``<root>/<category>`` or ``s3://bucket/prefix/<category>``. ``--status-file``
(what the server's update job reads) is rewritten atomically at each stage:
``{"stage": ..., "at": ...}``, then ``{"stage": "done", "artifact_id": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_NO_PARENT = 3  # rollback: the live version has no parent to return to


def write_status(path: str | None, **fields) -> None:
    """Replace the JSON status file at ``path`` (no-op without one)."""
    if path is None:
        return
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps({**fields, "at": time.time()}))
    os.replace(tmp, path)


def cmd_update(args: argparse.Namespace) -> int:
    from model.artifact.manifest import ArtifactError
    from model.jobs.dataset import list_defects, list_images
    from model.jobs.update import update_into

    goods = list_images(args.goods) if args.goods else []
    defects = [d for folder in args.defects for d in list_defects(folder)]
    write_status(args.status_file, stage="start")
    try:
        report, location = update_into(args.artifact, goods=goods, defects=defects, device=args.device,
                                       on_stage=lambda name: write_status(args.status_file, stage=name))
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        write_status(args.status_file, stage="failed", error=str(exc))
        raise ValueError(str(exc)) from exc
    write_status(args.status_file, stage="done", artifact_id=report.artifact_id, parent=report.parent,
                 added_goods=report.added_goods, added_defects=report.added_defects,
                 duplicates=len(report.duplicates), chosen=report.chosen, seconds=report.seconds["total"])
    print(f"artifact   {location} -> {report.artifact_id} (parent {report.parent})")
    print(f"learned    {report.added_goods} goods ({report.held_out} held out for calibration), "
          f"{report.added_defects} labelled defects")
    if report.duplicates:
        print(f"skipped    {len(report.duplicates)} already learned: " + ", ".join(report.duplicates[:5])
              + (" ..." if len(report.duplicates) > 5 else ""))
    same = "unchanged" if report.chosen == report.parent_chosen else f"was {report.parent_chosen}"
    print(f"scoring    {report.chosen} ({same})")
    for note in report.notes:
        print(f"note       {note}")
    print(f"size       {report.artifact_bytes / 1e6:.1f} MB")
    print("seconds    " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from model.artifact.manifest import ArtifactError, RollbackError
    from model.artifact.source import rollback

    try:
        left, live = rollback(args.artifact)
    except RollbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_PARENT
    except ArtifactError as exc:
        raise ValueError(str(exc)) from exc
    print(f"rolled back {args.artifact}: {left} -> {live}")
    return 0


def add_parsers(sub) -> None:
    u = sub.add_parser("update", help="learn confirmed goods (and labelled defects) into a new version of a category")
    u.add_argument("--artifact", required=True, help="<root>/<category>, or s3://bucket/prefix/<category>")
    u.add_argument("--goods", help="a folder of good images (false alarms confirmed at the line)")
    u.add_argument("--defects", action="append", default=[],
                   help="labelled defects, as <dir>/test/<type>/*.png with optional <dir>/ground_truth/<type>/"
                   "<stem>_mask.png (repeat for folders with and without masks)")
    u.add_argument("--device", default="cpu")
    u.add_argument("--status-file", default=None, help="rewrite this JSON file at each stage (for a job runner)")
    u.set_defaults(func=cmd_update)

    r = sub.add_parser("rollback", help="return a category to the version it was updated from")
    r.add_argument("--artifact", required=True, help="<root>/<category>, or s3://bucket/prefix/<category>")
    r.set_defaults(func=cmd_rollback)
