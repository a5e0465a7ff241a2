r"""Write an ssondo manifest (v1 CSV) for audio already on disk.

    python scripts/import_manifest.py folder /data/my_audio out/corpus.csv \
        [--label-from-parent] [--license CC0-1.0]
    python scripts/import_manifest.py audioset /data/AudioSet out/audioset.csv \
        --segments /data/AudioSet/eval_segments.csv --segments /data/AudioSet/balanced_train_segments.csv \
        [--class-labels /data/AudioSet/class_labels_indices.csv]

Files that cannot be used are listed (with the reason) in ``<output>.failures.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ssondo_train.data.importers import ImportFailure, import_audioset, import_folder
from ssondo_train.data.manifest import Manifest, write_manifest
from ssondo_train.utils.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    f = sub.add_parser("folder", help="every audio file under a folder")
    f.add_argument("root", type=Path)
    f.add_argument("output", type=Path)
    f.add_argument("--label-from-parent", action="store_true", help="label = parent folder name")
    f.add_argument("--source", default=None)
    f.add_argument("--license", default="")
    f.add_argument("--split", default="")
    a = sub.add_parser("audioset", help="AudioSet segments CSV(s) matched against local files")
    a.add_argument("audio_dir", type=Path)
    a.add_argument("output", type=Path)
    a.add_argument("--segments", type=Path, action="append", required=True)
    a.add_argument("--class-labels", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    missing: list[str] = []
    failures: list[ImportFailure]
    if args.kind == "folder":
        manifest, failures = import_folder(
            args.root,
            source=args.source,
            license=args.license,
            split=args.split,
            label_from_parent=args.label_from_parent,
        )
    else:
        clips, failures = [], []
        for csv_path in args.segments:
            result = import_audioset(csv_path, args.audio_dir, class_labels_csv=args.class_labels)
            clips += result.manifest.clips
            failures += result.failures
            missing += result.missing
        manifest = Manifest(args.audio_dir.resolve(), clips)
    write_manifest(args.output, manifest)
    report = args.output.with_name(args.output.name + ".failures.json")
    atomic_write_json(report, {"failures": [x.__dict__ for x in failures], "missing": missing})
    print(
        f"{len(manifest)} clips ({manifest.total_seconds / 3600:.2f} h) -> {args.output}; "
        f"{len(failures)} failed, {len(missing)} missing (see {report})"
    )
    return 0 if len(manifest) else 1


if __name__ == "__main__":
    sys.exit(main())
