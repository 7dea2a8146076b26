"""`mimistack tokenize-corpus` and `mimistack corpus-export`: the command-line face of `mimistack.corpus`.

Registered by `cli.main` (through `register(command)`); sits on `corpus` (the pipeline with its local and Ray
runners, reading back, flat export) and uses `cli`'s shared model options and error conventions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import RANDOM_WARNING, CliError
from .table import Command


def cmd_tokenize_corpus(args: argparse.Namespace) -> int:
    from ..corpus import tokenize_corpus

    if args.weights in ("random", "random-tiny"):
        print(RANDOM_WARNING, file=sys.stderr)
    result = tokenize_corpus(
        args.inputs,
        args.output,
        args.weights,
        revision=args.revision,
        engine=args.engine,
        device=args.device,
        dtype=args.dtype,
        onnx_dir=args.onnx_dir,
        runner=args.runner,
        address=args.address,
        num_cpus=args.num_cpus,
        encoders=args.encoders,
        threads=args.threads,
        batch_seconds=args.batch_seconds,
        files_per_shard=args.files_per_shard,
        progress=not args.quiet,
        fast=args.fast,
        agreement_files=args.agreement_files,
    )
    counts = result.manifest["counts"]
    print(
        f"{result.output}: {counts['rows']} utterances ({result.manifest['audio']['hours']:.3f} h) in "
        f"{counts['shards']} shards, {counts['errors']} bad files (errors.jsonl), {counts['pending']} pending"
    )
    if result.files_processed:
        print(
            f"this run: {result.files_processed} files, {result.audio_seconds:.1f} s of audio in "
            f"{result.elapsed_seconds:.1f} s ({result.audio_seconds_per_second:.1f} audio s/s); "
            f"{result.files_skipped} files were done before"
        )
    else:
        print(f"nothing to do: all {result.files_planned} files were done before")
    return 0


def cmd_corpus_export(args: argparse.Namespace) -> int:
    from ..corpus import export_flat

    if not Path(args.input).is_dir():
        raise CliError(f"corpus folder not found: {args.input}")
    export = export_flat(args.input, args.output, args.levels, force=args.force)
    print(
        f"{args.input} -> {export.folder}: {export.num_utterances} utterances, {export.num_tokens} uint16 tokens "
        f"(levels {','.join(map(str, export.levels))}, frame-major) in tokens.bin; offsets in index.npy"
    )
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def register(command: Command) -> None:
    p = command(
        "tokenize-corpus",
        cmd_tokenize_corpus,
        "tokenize an audio collection to Parquet token shards, in this process or on Ray (resumable; see "
        "docs/corpus.md)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a folder (searched recursively for audio), a quoted glob, a manifest (.csv, .jsonl, "
        ".parquet with a 'path' and an optional 'id' column), a WebDataset .tar shard, or a Hugging Face "
        "datasets-style .parquet/.arrow table with an audio column (or a save_to_disk folder)",
    )
    p.add_argument(
        "-o", "--output", required=True, help="output folder (created; an existing tokenize-corpus output is resumed)"
    )
    p.add_argument(
        "--runner",
        choices=("auto", "local", "ray"),
        default="auto",
        help="local: this process, one codec on every CPU (or --threads), the next files decoded meanwhile; "
        "ray: Ray Data (the cluster at --address, else a private local Ray); auto (default): ray with --address, "
        "else local. Both write the same shards and resume the same way",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (implies --runner ray; default: no cluster, run here)"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="model arithmetic (torch engine); float32 reproduces Codec.encode exactly",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="torch engine: the whole-input fast path (channels-last, polyphase, compiled on CUDA); "
        "with --dtype bfloat16 on a GPU it is ~3x faster, but its codes differ from float32's on "
        "many tokens (BENCHMARKS.md)",
    )
    p.add_argument(
        "--batch-seconds",
        type=float,
        default=None,
        help="padded audio seconds per encode call (default: 0 = one file per call on CPU, "
        "exactly Codec.encode; 1280 on GPU)",
    )
    p.add_argument(
        "--num-cpus",
        type=_positive_int,
        default=None,
        help="CPUs to use on this machine: the private local Ray's, or the local runner's codec threads when "
        "--threads is not given (default: all of this machine's)",
    )
    p.add_argument(
        "--encoders",
        type=_positive_int,
        default=None,
        help="Ray runner: encoder actors (default: one per GPU with --device cuda, else CPUs / --threads; "
        "--threads is then per actor). Local runner on CPU: that many codecs in this process, each on --threads "
        "threads (default 1), parallel over files (default: one codec on every CPU)",
    )
    p.add_argument(
        "--agreement-files",
        type=_non_negative_int,
        default=8,
        help="reduced precision (--dtype bfloat16/float16 or --fast): re-encode this many of the written files "
        "in strict float32 afterwards and record the share of equal tokens in manifest.json (default 8; 0: off)",
    )
    p.add_argument(
        "--files-per-shard",
        type=_positive_int,
        default=256,
        help="files per work unit and Parquet shard, fixed when a folder is first planned",
    )

    p = command(
        "corpus-export",
        cmd_corpus_export,
        "export a tokenized corpus as flat uint16 arrays for language-model training",
        model=False,
    )
    p.add_argument("input", help="a tokenize-corpus output folder")
    p.add_argument("-o", "--output", required=True, help="folder to create: tokens.bin, index.npy, ids.txt, meta.json")
    p.add_argument("--levels", default="0-7", help="levels to keep, interleaved per frame (default 0-7)")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing output folder")
