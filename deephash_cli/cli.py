"""The `deephash` command line: thin commands over the library and the HDF5 artifacts.

Each command parses options, reads artifacts, makes one library call and writes artifacts.
stdout carries only the output path (or JSON with --json); everything human goes to stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from deephash_cli import __version__
from deephash_cli import options as lists
from deephash_cli.errors import DeephashError, Terminated, on_signal, raise_pending


def _tidy_help() -> None:
    """Typer's rich help, made literal: option help is not searched for emoji codes (``START:END:EVERY`` is
    not ``START🔚EVERY``) and flags get no ``<bool>`` type."""
    try:
        from rich.text import Text
        from typer import core, rich_utils
    except ImportError:  # typer without rich: plain click help, neither problem
        return

    class LiteralText(Text):
        @classmethod
        def from_markup(cls, text, *, style="", emoji=True, **kwargs):  # noqa: ARG003 - emoji is forced off
            return Text.from_markup(text, style=style, emoji=False, **kwargs)

    if hasattr(rich_utils, "Text"):
        rich_utils.Text = LiteralText
    option = getattr(core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if original is not None and not getattr(original, "_deephash", False):
        def display_type_rich(self, ctx):
            if getattr(self, "is_flag", False) and self.metavar is None:
                return None
            return original(self, ctx)

        display_type_rich._deephash = True  # type: ignore[attr-defined]
        option.display_type_rich = display_type_rich


_tidy_help()

app = typer.Typer(
    name="deephash",
    help="Image retrieval representations as chainable stages: CNN features, triplet embeddings, binary "
    "hash codes, all judged by one evaluation (mAP, precision@K, kNN accuracy, t-SNE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deephash {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _STATE["debug"] = debug


def _reflow(text: str | None) -> str | None:
    """A docstring as help text: paragraphs kept, the line breaks inside each joined (rich help keeps single
    line breaks, which cut the command summaries mid-sentence)."""
    if not text:
        return text
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(text).split("\n\n"))


class _Signals:
    """SIGTERM and SIGINT raise Terminated / KeyboardInterrupt (deferred while HDF5 writes: errors.on_signal)
    for the duration of a command; the previous handlers come back afterwards."""

    def __enter__(self) -> "_Signals":
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                try:
                    self.previous[signum] = signal.signal(signum, on_signal)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _storage_message(err: BaseException) -> str | None:
    """The one line for a write refused for want of space anywhere (artifacts have their own message)."""
    from deephash_cli.artifacts import printable, storage_error

    reason = storage_error(err)
    if reason is None:
        return None
    filename = getattr(err, "filename", None)
    if filename:
        return f"{printable(filename)}: write failed: {reason}"
    last = next((line.strip() for line in reversed(str(err).splitlines()) if line.strip()), "")
    return f"write failed: {reason} ({type(err).__name__}: {last[:200]})"


def command(name: str, **kwargs) -> Callable:
    """Register a command whose user errors become one `error:` line on stderr and exit status 2 (SIGTERM:
    143, Ctrl-C: 130, both after cleaning up like any other error)."""

    def decorator(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kw):
            try:
                with _Signals():
                    result = function(*args, **kw)
                    raise_pending()
                return result
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except DeephashError as err:
                if _STATE["debug"]:
                    traceback.print_exc(file=sys.stderr)
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(2) from None
            except Terminated:
                if _STATE["debug"]:
                    traceback.print_exc(file=sys.stderr)
                typer.echo("error: terminated (SIGTERM); unfinished outputs were removed", err=True)
                raise typer.Exit(143) from None
            except KeyboardInterrupt:
                typer.echo("error: interrupted", err=True)
                raise typer.Exit(130) from None
            except BrokenPipeError:
                # The reader went away (`deephash search ... | head`): stop quietly, like other Unix tools.
                try:
                    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the closed pipe
                except OSError:
                    pass
                raise typer.Exit(141) from None
            except Exception as err:  # noqa: BLE001 - last line of defence, tracebacks only with --debug
                if _STATE["debug"]:
                    traceback.print_exc(file=sys.stderr)
                message = _storage_message(err)
                if message is not None:  # a full disk is the user's to fix, not a bug
                    typer.echo(f"error: {message}", err=True)
                    raise typer.Exit(2) from None
                if not _STATE["debug"]:
                    typer.echo(f"error: internal error {type(err).__name__}: {err} (rerun with --debug for the "
                               f"traceback)", err=True)
                raise typer.Exit(1) from None

        kwargs.setdefault("help", _reflow(function.__doc__))
        return app.command(name, **kwargs)(wrapper)

    return decorator


def _default_output(stem: str) -> Path:
    """artifacts/<stem>, the default output folder when -o is not given."""
    folder = Path("artifacts")
    folder.mkdir(exist_ok=True)
    return folder / stem


def _streams():
    """A ``streams.StreamSession``: '-' inputs are read from stdin, '-o -' streams the output to stdout."""
    from deephash_cli.streams import StreamSession

    return StreamSession()


def _emit(io, path: Path, extra: Optional[Path] = None) -> None:
    """Stream the '-' output (``path`` or ``extra``) to stdout, else print ``path`` (stdout stays a clean pipe)."""
    if extra is not None and io.publish(extra):
        return
    if not io.publish(path):
        typer.echo(str(path))


RUNTIME = typer.Option("eager", help="How the network "
                       "runs: eager (PyTorch, the exact reference), onnx (ONNX Runtime, float32) or int8 (ONNX "
                       "Runtime, static int8 quantisation); onnx and int8 run on the CPU and need `pip install "
                       "'deephash[onnx]'`. Speed and mAP of each: benchmarks/RESULTS.md.")
MAX_PIXELS = typer.Option(89_478_485, "--max-image-pixels", help="Refuse images of more than N pixels (the "
                          "decompression-bomb guard; PIL's default). They count as undecodable, so --skip-corrupt "
                          "skips them. 0: no limit.")


def _pixel_limit(value: int) -> None:
    from deephash_cli.datasets import set_max_image_pixels

    if value < 0:
        raise DeephashError(f"--max-image-pixels must be ≥ 0 (0: no limit), got {value}")
    set_max_image_pixels(value or None)


STREAM_HELP = " '-' reads it from stdin (e.g. piped from another command's -o -)."
OUT_STREAM_HELP = " '-' streams it to stdout."


def _parse_metrics(text: str) -> tuple[list[int], list[int], list[str]]:
    """'map,map@1000,precision@100,knn' -> (map_at Ks, precision_at Ks, the metric names in the order asked,
    normalised and without repeats: ['map', 'map@1000', 'precision@100', 'knn']).

    Also the metric-learning names recall@K, map@r (MAP@R) and nmi; a bare number repeats the metric before it
    with that K: 'recall@1,2,4,8' is recall@1, recall@2, recall@4 and recall@8."""
    map_at, precision_at, names = [], [], []
    previous = None
    for raw in lists.METRICS.parse(text):
        if raw.isdigit() and previous is not None:
            raw = f"{previous}@{raw}"
        name, _, k = raw.lower().partition("@")
        previous = name if name in ("map", "precision", "recall") else None
        if name == "map" and k == "r":
            normalised = "map@r"
        elif name not in ("map", "precision", "knn", "recall", "nmi") or (name in ("knn", "nmi") and k) \
                or (name in ("precision", "recall") and not k):
            raise DeephashError(f"--metric '{text}': unknown metric '{raw}'; valid names: {lists.METRIC_NAMES} (a "
                                f"bare number after recall@K, map@K or precision@K adds another K)")
        elif k:
            try:
                value = int(k)
            except ValueError:
                raise DeephashError(f"--metric '{text}': metric '{raw}': K must be a positive integer") from None
            if value <= 0:
                raise DeephashError(f"--metric '{text}': metric '{raw}': K must be a positive integer")
            if name != "recall":
                (map_at if name == "map" else precision_at).append(value)
            normalised = f"{name}@{value}"
        else:
            normalised = name
        if normalised not in names:
            names.append(normalised)
    return map_at, precision_at, names


# Options of particular embedding losses (train-triplet and finetune).
BETA = typer.Option("class", "--beta", help="margin loss: one learned boundary β per class (class) or one for "
                    "all (global).")
BETA_INIT = typer.Option(1.2, "--beta-init", help="margin loss: initial β, in (0, 2) (Wu et al.: 1.2).")
BETA_LR = typer.Option(1e-3, "--beta-lr", help="margin loss: β's learning rate, with the training optimizer "
                       "(Adam moves β by about this much a step); decayed with --lr-milestones; 0 keeps β fixed.")
NPAIR_REG = typer.Option(0.002, "--npair-reg", help="npair loss: L2 penalty λ on the embeddings, "
                         "λ/4·(mean‖f_a‖² + mean‖f_p‖²) (TensorFlow's npairs_loss; 0.002 its default).")


def _loss_options(beta: str, beta_init: float, beta_lr: float, npair_reg: float):
    from deephash_cli.embedding_losses import LossOptions

    options = LossOptions(beta=beta, beta_init=beta_init, beta_lr=beta_lr, npair_reg=npair_reg)
    options.check()
    return options


# --------------------------------------------------------------------------- extract


MEAN = typer.Option("0.485,0.456,0.406", metavar=lists.MEAN.metavar, help="Per-channel mean for normalisation "
                    "(ImageNet's; the shared MobileNetV2 weights need 0.5,0.5,0.5); one value: all three channels.")
STD = typer.Option("0.229,0.224,0.225", metavar=lists.STD.metavar, help="Per-channel std for normalisation, each "
                   "> 0 (ImageNet's; the shared MobileNetV2 weights need 0.5,0.5,0.5); one value: all three "
                   "channels.")


@command("extract")
def extract(
    dataset: str = typer.Option("digits", help="Dataset: cifar10 (torchvision's, downloaded when reachable, "
                                "else --data-dir), imagefolder (ROOT/train/<class>/*, ROOT/test/<class>/*), "
                                "digits (scikit-learn's 8×8 digits, offline); read from their published lists in "
                                "--data-dir, never downloaded: cub200 (CUB-200-2011), dogs (Stanford Dogs), sop "
                                "(Stanford Online Products), inshop (In-shop Clothes: train, query and gallery "
                                "splits). Layouts: docs/dml.md."),
    data_dir: Optional[str] = typer.Option(None, help="Dataset folder (cifar10: where cifar-10-batches-py is or "
                                           "goes, default ./data; imagefolder: ROOT; cub200: CUB_200_2011; dogs: "
                                           "the folder of Images/ and lists/; sop: Stanford_Online_Products; "
                                           "inshop: the folder of list_eval_partition.txt or Eval/)."),
    split: str = typer.Option("official", "--split", help="official: the dataset's own train/test split; classes: "
                              "class-disjoint, as in metric learning: all images of the first half of the classes "
                              "(ids 0..C/2-1) train, the other half test (CUB 100/100, Dogs 60/60, CIFAR-10 "
                              "0-4/5-9); sop and inshop keep their official split, already class-disjoint."),
    backbone: str = typer.Option("pixels", help="Feature extractor. Layers: vgg16/vgg19 fc7 after ReLU (4096); "
                                 "resnet18/34 global pool (512), resnet50/101/152 (2048); mobilenet_v2 and "
                                 "efficientnet_b0 global pool (1280); mobilenet_v3_small/large penultimate "
                                 "(1024/1280); pixels: raw normalised pixels."),
    weights: str = typer.Option("default", help="'default': torchvision's pretrained weights (downloaded and "
                                "cached by torchvision); 'none': random init; PATH: a state_dict file of the full "
                                "torchvision model, loaded with weights_only=True."),
    image_size: Optional[int] = typer.Option(None, help="Resize (short side) and centre-crop size. Default: 224 "
                                             "for CNN backbones, the native size for pixels."),
    mean: str = MEAN,
    std: str = STD,
    batch_size: int = typer.Option(128, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    workers: int = typer.Option(1, help="DataLoader worker processes decoding images (0: in the main process)."),
    limit_per_class: Optional[int] = typer.Option(None, help="Keep only the first N items of each class per split "
                                                  "(quick subsets)."),
    test_fraction: float = typer.Option(0.2, help="Test share of the stratified split made when the dataset has "
                                        "no test split (digits, imagefolder without test/)."),
    seed: int = typer.Option(0, help="Seed of that split."),
    skip_corrupt: bool = typer.Option(False, help="Leave out images that fail to decode (warned and counted in "
                                      "the artifact) instead of failing with the file's path."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output features artifact. Default: "
                                          "artifacts/<dataset>-<backbone>.h5 (with --model: "
                                          "artifacts/<model>.<dataset>.h5). A shard goes to OUT with "
                                          ".shard-0000K-of-0000N inserted before .h5." + OUT_STREAM_HELP),
    model: Optional[Path] = typer.Option(None, "--model", help="A `deephash finetune` model artifact: its backbone "
                                         "+ head, image size and mean/std replace --backbone/--weights/--image-size/"
                                         "--mean/--std; writes embeddings (hash models: packed binary codes)."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="Extract only shard K of N "
                                        "(0 ≤ K < N, numbered from 0 like Slurm array task ids): a contiguous run "
                                        "of whole batches of every split; `deephash merge` joins the N shards. "
                                        "Under torchrun (WORLD_SIZE > 1) each process takes shard "
                                        "RANK/WORLD_SIZE by itself. See docs/scale.md."),
    runtime: str = RUNTIME,
    calibration_images: int = typer.Option(256, min=1, help="--runtime int8: training images (a fixed sample "
                                           "drawn with --seed) that set the activation ranges."),
    max_image_pixels: int = MAX_PIXELS,
    force: bool = typer.Option(False, help="Overwrite an existing output."),
) -> None:
    """Extract features of every split with a pretrained CNN (layer before the classifier) into HDF5."""
    from deephash_cli import shards, stages

    mean_rgb, std_rgb = lists.channels(lists.MEAN, mean), lists.channels(lists.STD, std)
    _pixel_limit(max_image_pixels)
    chosen = shards.choose(shard)
    with _streams() as io:
        out = io.output(output, lambda: _default_output(
            f"{io.name(model).removesuffix('.h5').removesuffix('.model')}.{dataset}.h5" if model is not None
            else f"{dataset}-{backbone}.h5"))
        if chosen is not None and not io.is_streamed(out):
            out = shards.output_path(out, chosen)
        path = stages.run_extract(
            out, dataset=dataset, data_dir=data_dir, backbone=backbone, weights=weights, image_size=image_size,
            mean=mean_rgb, std=std_rgb, batch_size=batch_size, device=device, workers=workers,
            limit_per_class=limit_per_class, test_fraction=test_fraction, seed=seed, skip_corrupt=skip_corrupt,
            force=force, model_path=model, shard=chosen, split=split, runtime=runtime,
            calibration_images=calibration_images)
        _emit(io, path)


# --------------------------------------------------------------------------- merge


@command("merge")
def merge(
    shard_files: List[Path] = typer.Argument(..., metavar="SHARD", help="The N shards of one sharded "
                                             "extraction (extract --shard K/N, or extract under torchrun), in any "
                                             "order."),
    output: Path = typer.Option(..., "-o", "--output", help="The merged artifact." + OUT_STREAM_HELP),
    force: bool = typer.Option(False, help="Overwrite an existing output."),
) -> None:
    """Join the shards of a sharded extract into the artifact one process would have written: the same
    features, labels and paths bit for bit, rows in dataset order, the same config. Refuses an incomplete set,
    a shard given twice, shards of another N and shards made with other settings (see docs/scale.md)."""
    from deephash_cli.stages import run_merge
    from deephash_cli.ui import stderr_console

    with _streams() as io:
        out = io.output(output, lambda: output)
        summary = run_merge(list(shard_files), out, force=force)
        rows = ", ".join(f"{name} {n}" for name, n in summary["rows"].items())
        stderr_console().print(f"merged {summary['shards']} shards: {rows} rows")
        _emit(io, out)


# --------------------------------------------------------------------------- evaluate


@command("evaluate")
def evaluate(
    file: Path = typer.Argument(..., help="A features, embeddings or codes artifact." + STREAM_HELP),
    metric: str = typer.Option("map,precision@100,knn", "--metric", "-m", metavar=lists.METRICS.metavar,
                               help="Comma-separated (an empty item is an error): map (mAP over "
                               "the whole database), map@K, precision@K, knn; and the metric-learning ones "
                               "recall@K (a hit among the K nearest; recall@1,2,4,8 asks four), map@r (MAP@R, "
                               "Musgrave et al. 2020) and nmi (k-means of the queries, seeded by --seed). The "
                               "table shows these; --json also lists them under 'metrics' (and keeps 'map' and "
                               "'knn_accuracy', always computed). Definitions: docs/dml.md."),
    k: int = typer.Option(10, "--k", help="Neighbours in the kNN vote."),
    distance: Optional[str] = typer.Option(None, help="euclidean or cosine for float features (default "
                                           "euclidean); codes always use Hamming."),
    ties: str = typer.Option("expected", help="How Hamming ties enter the headline mAP: expected (tie-aware, "
                             "McSherry & Najork 2008), optimistic or pessimistic. JSON reports all three."),
    protocol: str = typer.Option("splits", help="splits: --query-split against --database-split; pooled: "
                                 "--queries-per-class items per class of --query-split against all other items "
                                 "(the standard hashing protocol: 1,000 vs 59,000 on CIFAR-10); within: every "
                                 "item of --query-split against the others of that split, leave-one-out (the "
                                 "metric-learning protocol on unseen classes; an artifact with query and gallery "
                                 "splits, In-shop, is evaluated query against gallery)."),
    query_split: str = typer.Option("test", help="Split the queries come from."),
    database_split: str = typer.Option("train,val", metavar=lists.DATABASE_SPLITS.metavar, help="Database splits, "
                                       f"comma-separated, each given once (protocol splits): {lists.SPLIT_NAMES}; "
                                       "val is used when present. An empty item is an error."),
    queries_per_class: int = typer.Option(100, help="Queries per class (protocol pooled)."),
    seed: int = typer.Option(0, help="Seed of the pooled protocol's query draw and of nmi's k-means."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of a table."),
    record: bool = typer.Option(False, "--record", help="Also store the result in <FILE>.evals.json next to the "
                                "artifact (the artifact itself is not modified), for `deephash report` and "
                                "`deephash info`; re-recording the same setting replaces it."),
) -> None:
    """Retrieval quality of an artifact: mAP, mAP@K, precision@K and kNN accuracy, and the metric-learning Recall@K,
    MAP@R and NMI, one methodology for all."""
    from deephash_cli import stages

    map_at, precision_at, names = _parse_metrics(metric)
    database = lists.DATABASE_SPLITS.parse(database_split)
    if ties not in ("expected", "optimistic", "pessimistic"):
        raise DeephashError(f"unknown --ties '{ties}'; valid names: expected, optimistic, pessimistic")
    with _streams() as io:
        result = stages.run_evaluate(io.input(file), map_at=map_at, precision_at=precision_at, knn_k=k,
                                     distance=distance, protocol=protocol, query_split=query_split,
                                     database_split=database, queries_per_class=queries_per_class, seed=seed,
                                     ties=ties, record=record, metrics=names,
                                     recall_at=[int(n.split("@")[1]) for n in names if n.startswith("recall@")],
                                     map_at_r="map@r" in names, nmi="nmi" in names)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        from deephash_cli.ui import evaluation_table, stderr_console

        stderr_console().print(evaluation_table(result))
        typer.echo(str(file))


@command("split-classes")
def split_classes(
    file: Path = typer.Argument(..., help="A features artifact made by extract with the official split."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output features artifact. Default: "
                                          "artifacts/<input>.classes.h5."),
    force: bool = typer.Option(False, help="Overwrite an existing output."),
) -> None:
    """Re-split extracted features class-disjointly without decoding the images again: the same artifact as
    extract --split classes (every item pooled; the first half of the classes train, the rest test)."""
    from deephash_cli import stages
    from deephash_cli.ui import stderr_console

    out = output or _default_output(f"{file.name.removesuffix('.h5')}.classes.h5")
    counts = stages.run_split_classes(file, out, force=force)
    stderr_console().print(f"train {counts['train']} items, test {counts['test']} items")
    typer.echo(str(out))


# --------------------------------------------------------------------------- plot-tsne


@command("plot-tsne")
def plot_tsne(
    file: Path = typer.Argument(..., help="A features, embeddings or codes artifact." + STREAM_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output PNG. Default: "
                                          "artifacts/<input>.tsne-<split>.png." + OUT_STREAM_HELP),
    split: str = typer.Option("test", help="Split to plot."),
    max_points: int = typer.Option(5000, help="Stratified subsample size (keeps class proportions)."),
    perplexity: float = typer.Option(30.0, help="t-SNE perplexity."),
    seed: int = typer.Option(0, help="Seed of the subsample and of t-SNE."),
    title: Optional[str] = typer.Option(None, help="Plot title (default: file, split and point count)."),
    force: bool = typer.Option(False, help="Overwrite an existing output."),
) -> None:
    """t-SNE scatter of one split, coloured by class (codes are plotted as ±1 vectors)."""
    from deephash_cli import stages

    with _streams() as io:
        source = io.input(file)
        out = io.output(output, lambda: _default_output(f"{io.stem(file)}.tsne-{split}.png"), suffix=".png")
        _emit(io, stages.run_plot_tsne(source, out, split=split, max_points=max_points, perplexity=perplexity,
                                       seed=seed, title=title, force=force))


# --------------------------------------------------------------------------- training options (shared)


def _train_options(epochs: int, batch_size: int, lr: float, optimizer: str, weight_decay: float, seed: int,
                   early_stopping: Optional[int], miner: str, classes_per_batch: int, samples_per_class: int,
                   lr_milestones: str = "", lr_gamma: float = 0.1):
    from deephash_cli.train import TrainOptions

    milestones = tuple(lists.LR_MILESTONES.parse(lr_milestones))
    return TrainOptions(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                        seed=seed, early_stopping=early_stopping, miner=None if miner == "random" else miner,
                        classes_per_batch=classes_per_batch, samples_per_class=samples_per_class,
                        lr_milestones=milestones, lr_gamma=lr_gamma)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether parameter ``name`` was given (on the command line or by an environment variable), not defaulted."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _seed_list(ctx: typer.Context, seeds: Optional[str]) -> Optional[list[int]]:
    """The seeds of --seeds (None without it); --seed and --seeds together are an error."""
    if seeds is None:
        return None
    if _given(ctx, "seed"):
        raise DeephashError("--seed and --seeds exclude each other; give --seed S for one run or --seeds S,S,... "
                            "for one run per seed")
    return lists.SEEDS.parse(seeds)


def _command_with(ctx: typer.Context, changes: dict[str, Any]) -> str:
    """This command as a shell line with ``changes`` ({parameter name: value}, None leaves it out): `deephash
    <command>` with every parameter given on the command line, in the command's order. --seeds records it."""
    import shlex

    words = ["deephash", str(ctx.info_name)]
    for param in ctx.command.params:
        name = str(param.name)
        if name in changes:
            value = changes[name]
        elif _given(ctx, name):
            value = ctx.params.get(name)
        else:
            continue
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if param.param_type_name == "argument":
            words += [os.fspath(v) if isinstance(v, os.PathLike) else str(v) for v in values]
            continue
        option = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            negative = getattr(param, "secondary_opts", None)
            words += [option] if value else [max(negative, key=len)] if negative else []
            continue
        for item in values:
            words += [option, os.fspath(item) if isinstance(item, os.PathLike) else str(item)]
    return shlex.join(words)


def _each_seed(ctx: typer.Context, seeds: list[int], outputs: dict[str, Optional[Path]], force: bool,
               run: Callable[[int, dict[str, Optional[Path]]], Optional[Path]]) -> None:
    """``run(seed, outputs)`` once per seed, with that seed's outputs (``outputs``: {parameter name: path};
    ``seeds.plan`` names and checks them all before the first run). Each run's artifacts record the command
    with --seed S and those outputs, which remakes them alone; stdout gets each run's main output path."""
    from deephash_cli.artifacts import recorded_command
    from deephash_cli.seeds import plan

    options = {name: "--" + name.replace("_", "-") for name in outputs}
    runs = plan({options[name]: path for name, path in outputs.items()}, seeds, force)
    for seed, planned in zip(seeds, runs):
        paths = {name: planned[options[name]] for name in outputs}
        with recorded_command(_command_with(ctx, {"seeds": None, "seed": seed, **paths})):
            written = run(seed, paths)
        if written is not None:  # None: a torchrun rank other than 0, which prints nothing
            typer.echo(str(written))


EPOCHS = typer.Option(20, help="Training epochs (an epoch: one random triplet per training item, or "
                      "n/(P·K) mined batches).")
BATCH = typer.Option(256, help="Triplets per step with --miner random (mined batches are P×K items).")
LR = typer.Option(1e-3, help="Learning rate.")
LR_MILESTONES = typer.Option("", metavar=lists.LR_MILESTONES.metavar, help="Step decay: comma-separated epochs "
                             "(each ≥ 1, increasing) after which every learning rate is multiplied by --lr-gamma "
                             "(e.g. 6,9). Default: constant rates. An empty item (6,,9) is an error.")
LR_GAMMA = typer.Option(0.1, help="Learning-rate factor applied at each --lr-milestones epoch.")
OPTIMIZER = typer.Option("adam", help="adam or sgd (Nesterov momentum 0.9).")
WEIGHT_DECAY = typer.Option(0.0, help="L2 weight decay, ≥ 0.")
SEED = typer.Option(0, help="Seed of initialisation, validation split, triplets and batches.")
SEEDS = typer.Option(None, "--seeds", metavar=lists.SEEDS.metavar, help="Run once per seed, e.g. 0,1,2, instead of "
                     "--seed: each run equals this command with --seed S and writes its outputs with .seed<S> "
                     "before the extension (-o hash.model.h5 -> hash.seed0.model.h5, ...); `deephash report` "
                     "shows the runs as mean ± std.")
EARLY = typer.Option(None, help="Stop after N epochs without validation-mAP improvement (default: never).")
MINER = typer.Option("random", help="Triplet source: random (fresh seeded triplets over the whole train split "
                     "each epoch) or a miner over P×K batches: all, hardest, semihard, random-hard, "
                     "distance-weighted.")
P_OPT = typer.Option(10, "--classes-per-batch", help="P: classes per mined batch.")
K_OPT = typer.Option(25, "--samples-per-class", help="K: items per class in a mined batch.")
VAL = typer.Option(0.1, help="Share of train carved (stratified, seeded) into the validation split.")
METHOD = typer.Option("triplet-ranking", help="Hash method. From similar/dissimilar relations (triplets): "
                      "triplet-ranking (Lai et al. 2015: hinge on tanh outputs, margin bits/4), dtsh (Wang, Shi & "
                      "Kitani 2016: triplet likelihood on ½uᵀv, margin α, + λ‖b−u‖²). From class labels (need "
                      "labelled classes): centers (CSQ, Yuan et al. 2020: BCE to Hadamard hash centres + "
                      "λ(|h|−1)², λ default 1e-4), greedyhash (Su et al. 2018: classifier on sign(h) with a "
                      "straight-through gradient + λ|(|h|−1)³|, λ default 0.1). From pairs of the batch: hashnet (Cao "
                      "et al. 2017: weighted pairwise likelihood on tanh(βx), β raised by --continuation). Two steps: "
                      "ftde (Zhuang et al. 2016: codes inferred from triplets, then learnt as bits by binary "
                      "cross-entropy; --ftde-every, --ftde-triplets).")
ALPHA = typer.Option(None, help="DTSH margin α, > 0 (default bits/2, the paper's constant); HashNet's sigmoid "
                     "scale α (default 10/bits, the official code's).")
LAMBDA = typer.Option(None, "--lambda", help="Quantisation weight λ ≥ 0 (dtsh default 1/bits, i.e. the penalty "
                      "averaged over the bits; centers 1e-4; greedyhash 0.1).")
LAM_WARMUP = typer.Option(0, help="DTSH: λ = 0 for the first N ≥ 0 epochs (schedule).")
ALPHA_RAMP = typer.Option(None, help="DTSH: START:END:EVERY, α starts at START and doubles every EVERY epochs up "
                          "to END, e.g. 1:16:2 (schedule).")
RANKING_MARGIN = typer.Option(None, help="triplet-ranking margin, > 0 (default bits/4).")
CONTINUATION = typer.Option("1:16:2", help="HashNet: START:END:EVERY, β of tanh(βx) starts at START and doubles every "
                            "EVERY epochs up to END (continuation).")
FTDE_EVERY = typer.Option(3, help="FTDE: infer the training codes (step 1) on epochs 1, 1+N, 1+2N, ...")
FTDE_TRIPLETS = typer.Option(4, help="FTDE: random triplets per training item for each code inference.")
DEVICE = typer.Option("auto", help="auto (CUDA when present), cpu or cuda.")


@command("train-triplet")
def train_triplet(
    ctx: typer.Context,
    features: Path = typer.Argument(..., help="A features (or embeddings) artifact." + STREAM_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output embeddings artifact (all splits). "
                                          "Default: artifacts/<input>.triplet-<loss>.h5." + OUT_STREAM_HELP),
    save_model: Optional[Path] = typer.Option(None, help="Also save the trained network as a model artifact."
                                              + OUT_STREAM_HELP),
    loss: str = typer.Option("facenet", help="facenet (Schroff 2015, squared distances on the unit sphere), hoffer "
                             "(Hoffer & Ailon 2015, softmax of distances, no margin), contrastive (Hadsell 2006), "
                             "npair (Sohn 2016, multi-class N-pair: one pair per class of the batch, raw "
                             "embeddings, no margin) or margin (Wu et al. 2017: learned boundary β, see --beta*; "
                             "partner: --miner distance-weighted)."),
    margin: str = typer.Option("0.05,0.1,0.2,0.5,1.0", metavar=lists.MARGINS.metavar, help="Margins to try, "
                               "comma-separated, each > 0 and given once; one model per margin, the best "
                               "validation mAP wins (hoffer and npair ignore it; margin: α, the paper's 0.2). An "
                               "empty item (0.1,,0.2) is an error."),
    head: str = typer.Option("mlp", help="Embedding network: linear (d→dim) or mlp (d→hidden→dim, BatchNorm, "
                             "ReLU)."),
    dim: int = typer.Option(128, help="Embedding dimension."),
    hidden: int = typer.Option(512, help="Hidden width of the mlp head."),
    beta: str = BETA,
    beta_init: float = BETA_INIT,
    beta_lr: float = BETA_LR,
    npair_reg: float = NPAIR_REG,
    miner: str = MINER,
    classes_per_batch: int = P_OPT,
    samples_per_class: int = K_OPT,
    val_fraction: float = VAL,
    epochs: int = EPOCHS,
    batch_size: int = BATCH,
    lr: float = LR,
    lr_milestones: str = LR_MILESTONES,
    lr_gamma: float = LR_GAMMA,
    optimizer: str = OPTIMIZER,
    weight_decay: float = WEIGHT_DECAY,
    early_stopping: Optional[int] = EARLY,
    seed: int = SEED,
    seeds: Optional[str] = SEEDS,
    device: str = DEVICE,
    force: bool = typer.Option(False, help="Overwrite existing outputs."),
) -> None:
    """Learn an embedding on features with a triplet loss; margin chosen on a validation split."""
    from deephash_cli.backbones import resolve_device
    from deephash_cli.train_stages import run_train_triplet
    from deephash_cli.ui import stderr_console

    margins = lists.MARGINS.parse(margin)
    seed_list = _seed_list(ctx, seeds)
    options = _train_options(epochs, batch_size, lr, optimizer, weight_decay, seed, early_stopping, miner,
                             classes_per_batch, samples_per_class, lr_milestones=lr_milestones, lr_gamma=lr_gamma)
    loss_options = _loss_options(beta, beta_init, beta_lr, npair_reg)

    def train(source: Path, out: Path, model_out: Optional[Path], run_seed: int) -> Path:
        summary = run_train_triplet(source, out, save_model_path=model_out, head=head, dim=dim, hidden=hidden,
                                    loss=loss, margins=margins, val_fraction=val_fraction,
                                    options=dataclasses.replace(options, seed=run_seed),
                                    device=resolve_device(device), force=force, loss_options=loss_options)
        prefix = f"seed {run_seed}: " if seed_list is not None else ""
        for run in summary["margin_search"]:
            stderr_console().print(f"{prefix}margin {run['margin']}: best val mAP {run['val_map']:.4f} at epoch "
                                   f"{run['best_epoch']} ({run['seconds_per_epoch']:.2f} s/epoch)")
        stderr_console().print(f"{prefix}chosen margin: {summary['chosen_margin']} (val mAP "
                               f"{summary['best_val_map']:.4f})")
        return out

    with _streams() as io:
        source = io.input(features)
        if seed_list is not None:
            _each_seed(ctx, seed_list, {"output": output or _default_output(
                f"{io.stem(features)}.triplet-{loss}.h5"), "save_model": save_model}, force,
                lambda run_seed, paths: train(source, paths["output"], paths["save_model"], run_seed))
            return
        out = io.output(output, lambda: _default_output(f"{io.stem(features)}.triplet-{loss}.h5"))
        model_out = io.output(save_model, lambda: None)
        _emit(io, train(source, out, model_out, seed), model_out)


@command("train-hash")
def train_hash(
    ctx: typer.Context,
    features: Path = typer.Argument(..., help="A features (or embeddings) artifact." + STREAM_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output model artifact. Default: "
                                          "artifacts/<input>.hash-<method>-<bits>.model.h5." + OUT_STREAM_HELP),
    bits: int = typer.Option(48, help="Code length in bits (8..256)."),
    method: str = METHOD,
    alpha: Optional[float] = ALPHA,
    lam: Optional[float] = LAMBDA,
    lam_warmup: int = LAM_WARMUP,
    alpha_ramp: Optional[str] = ALPHA_RAMP,
    ranking_margin: Optional[float] = RANKING_MARGIN,
    continuation: str = CONTINUATION,
    ftde_every: int = FTDE_EVERY,
    ftde_triplets: int = FTDE_TRIPLETS,
    head: str = typer.Option("mlp", help="Hash network: linear or mlp."),
    hidden: int = typer.Option(512, help="Hidden width of the mlp head."),
    miner: str = MINER,
    classes_per_batch: int = P_OPT,
    samples_per_class: int = K_OPT,
    val_fraction: float = VAL,
    epochs: int = EPOCHS,
    batch_size: int = BATCH,
    lr: float = LR,
    lr_milestones: str = LR_MILESTONES,
    lr_gamma: float = LR_GAMMA,
    optimizer: str = OPTIMIZER,
    weight_decay: float = WEIGHT_DECAY,
    early_stopping: Optional[int] = EARLY,
    seed: int = SEED,
    seeds: Optional[str] = SEEDS,
    device: str = DEVICE,
    force: bool = typer.Option(False, help="Overwrite an existing output."),
) -> None:
    """Train a hash network (features → bits real outputs → sign); validation mAP of the binary codes."""
    from deephash_cli.backbones import resolve_device
    from deephash_cli.hashing import HashOptions
    from deephash_cli.train_stages import run_train_hash
    from deephash_cli.ui import stderr_console

    seed_list = _seed_list(ctx, seeds)
    options = _train_options(epochs, batch_size, lr, optimizer, weight_decay, seed, early_stopping, miner,
                             classes_per_batch, samples_per_class, lr_milestones=lr_milestones, lr_gamma=lr_gamma)
    hash_options = HashOptions(alpha=alpha, lam=lam, lam_warmup=lam_warmup, alpha_ramp=alpha_ramp,
                               margin=ranking_margin, continuation=continuation, ftde_every=ftde_every,
                               ftde_triplets=ftde_triplets)

    def train(source: Path, out: Path, run_seed: int) -> Path:
        summary = run_train_hash(source, out, bits=bits, method=method, hash_options=hash_options, head=head,
                                 hidden=hidden, val_fraction=val_fraction,
                                 options=dataclasses.replace(options, seed=run_seed),
                                 device=resolve_device(device), force=force)
        prefix = f"seed {run_seed}: " if seed_list is not None else ""
        stderr_console().print(f"{prefix}best val mAP {summary['best_val_map']:.4f} at epoch "
                               f"{summary['best_epoch']} ({summary['seconds_per_epoch']:.2f} s/epoch)")
        return out

    with _streams() as io:
        source = io.input(features)
        default = f"{io.stem(features)}.hash-{method}-{bits}.model.h5"
        if seed_list is not None:
            _each_seed(ctx, seed_list, {"output": output or _default_output(default)}, force,
                       lambda run_seed, paths: train(source, paths["output"], run_seed))
            return
        _emit(io, train(source, io.output(output, lambda: _default_output(default)), seed))


@command("encode")
def encode(
    features: Path = typer.Argument(..., help="A features artifact (the same backbone the model was trained on)."
                                    + STREAM_HELP),
    model: Path = typer.Option(..., "--model", help="A model artifact from train-hash or train-triplet."
                               + STREAM_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output codes (or embeddings) artifact. "
                                          "Default: artifacts/<model>.codes.h5 (.relaxed.h5 with --relaxed), "
                                          "<model> without .model.h5." + OUT_STREAM_HELP),
    relaxed: bool = typer.Option(False, help="Write a hash model's real-valued outputs (embeddings) instead of "
                                 "the binary codes."),
    device: str = DEVICE,
    force: bool = typer.Option(False, help="Overwrite an existing output."),
) -> None:
    """Encode every split with a trained model: packed binary codes (MSB first, faiss-ready) or embeddings."""
    from deephash_cli.backbones import resolve_device
    from deephash_cli.train_stages import run_encode

    suffix = "relaxed" if relaxed else "codes"
    with _streams() as io:
        source, model_source = io.input(features), io.input(model)
        out = io.output(output, lambda: _default_output(
            f"{io.name(model).removesuffix('.h5').removesuffix('.model')}.{suffix}.h5"))
        run_encode(source, model_source, out, relaxed=relaxed, device=resolve_device(device), force=force)
        _emit(io, out)


# --------------------------------------------------------------------------- finetune


@command("finetune")
def finetune(
    ctx: typer.Context,
    objective: str = typer.Option("triplet", help="triplet: an embedding with --loss/--margin (as train-triplet); "
                                  "hash: binary codes with --method/--bits (as train-hash)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output model artifact (backbone + head, "
                                          "rewritten with a checkpoint after every epoch). Default: "
                                          "artifacts/<dataset>-<backbone>.finetune-<objective>.model.h5."),
    dataset: str = typer.Option("digits", help="Dataset, as for extract: cifar10, imagefolder or digits."),
    data_dir: Optional[str] = typer.Option(None, help="Dataset folder, as for extract."),
    backbone: str = typer.Option("mobilenet_v2", help="CNN to fine-tune (any extract backbone except pixels)."),
    weights: str = typer.Option("default", help="Initial backbone weights: 'default' (torchvision's), 'none' "
                                "(random) or PATH to a state_dict of the full torchvision model."),
    init: Optional[Path] = typer.Option(None, help="Start from a model written by finetune instead of --weights: "
                                        "its backbone and preprocessing, and its head when the new head has the "
                                        "same shape (e.g. continue with lower learning rates); otherwise a new "
                                        "head (e.g. hash codes on a fine-tuned embedding). Recorded as parent."),
    image_size: Optional[int] = typer.Option(None, help="Training crop and evaluation size (default 224). "
                                             "Training: random resized crop (scale 0.5–1) + horizontal flip; "
                                             "validation and extract: resize + centre crop."),
    mean: str = MEAN,
    std: str = STD,
    limit_per_class: Optional[int] = typer.Option(None, help="Keep only the first N items of each class per split "
                                                  "(quick subsets)."),
    test_fraction: float = typer.Option(0.2, help="Test share when the dataset has no test split (as extract)."),
    split_seed: int = typer.Option(0, help="Seed of that test split (extract's --seed: keep them equal, so that "
                                   "extract --model tests on images the model never trained on). Independent of "
                                   "--seed and --seeds."),
    split: str = typer.Option("official", "--split", help="As extract's: official, or classes (class-disjoint: "
                              "training and validation see only the first half of the classes)."),
    head: str = typer.Option("linear", help="Head on the backbone's features: linear or mlp (BatchNorm in the "
                             "mlp trains with batch statistics)."),
    dim: int = typer.Option(128, help="Embedding dimension (--objective triplet)."),
    hidden: int = typer.Option(512, help="Hidden width of the mlp head."),
    loss: str = typer.Option("facenet", help="Embedding loss (--objective triplet): facenet, hoffer, contrastive, "
                             "npair or margin (as train-triplet)."),
    margin: str = typer.Option("0.2", metavar="M", help="The loss margin, > 0 (--objective triplet; one value)."),
    beta: str = BETA,
    beta_init: float = BETA_INIT,
    beta_lr: float = BETA_LR,
    npair_reg: float = NPAIR_REG,
    bits: int = typer.Option(48, help="Code length (--objective hash), 8..256."),
    method: str = METHOD,
    alpha: Optional[float] = ALPHA,
    lam: Optional[float] = LAMBDA,
    lam_warmup: int = LAM_WARMUP,
    alpha_ramp: Optional[str] = ALPHA_RAMP,
    ranking_margin: Optional[float] = RANKING_MARGIN,
    continuation: str = CONTINUATION,
    ftde_every: int = FTDE_EVERY,
    ftde_triplets: int = FTDE_TRIPLETS,
    miner: str = typer.Option("semihard", help="Triplet source: a miner over P×K batches (all, hardest, semihard, "
                              "random-hard, distance-weighted) or random (--batch-size random "
                              "triplets per step)."),
    classes_per_batch: int = P_OPT,
    samples_per_class: int = K_OPT,
    val_fraction: float = VAL,
    epochs: int = typer.Option(10, help="Training epochs (an epoch: n/(P·K) mined batches, or one random triplet "
                               "per training item). May be raised on --resume."),
    batch_size: int = BATCH,
    lr: float = typer.Option(1e-3, help="Learning rate of the head."),
    lr_milestones: str = LR_MILESTONES,
    lr_gamma: float = LR_GAMMA,
    lr_backbone: float = typer.Option(1e-4, help="Learning rate of the backbone (0 keeps its weights fixed)."),
    optimizer: str = OPTIMIZER,
    weight_decay: float = WEIGHT_DECAY,
    early_stopping: Optional[int] = EARLY,
    freeze_bn: bool = typer.Option(True, "--freeze-bn/--no-freeze-bn", help="Keep the backbone's BatchNorm layers "
                                   "in eval mode with their pretrained statistics (affine weights still train). "
                                   "Default on: P×K batches hold only P classes and are small per process, the "
                                   "shared MobileNetV2 statistics come from a quantised model, and fixed statistics "
                                   "make multi-process training equal to one process."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA (float16 autocast + "
                             "GradScaler); always off on CPU."),
    seed: int = SEED,
    seeds: Optional[str] = SEEDS,
    device: str = DEVICE,
    workers: int = typer.Option(0, min=0, help="DataLoader worker processes decoding images: training batches "
                                "two steps ahead, and the validation and standardisation passes (0: in the main "
                                "process). Results are the same for every value."),
    eval_batch_size: int = typer.Option(128, help="Images per forward pass when embedding without gradients."),
    memory_check: bool = typer.Option(True, "--memory-check/--no-memory-check", help="Before training (one "
                                      "process), measure what backpropagation keeps per image and refuse a step "
                                      "that needs more than the memory available now."),
    max_image_pixels: int = MAX_PIXELS,
    resume: bool = typer.Option(False, "--resume", help="Continue the run checkpointed in --output from its last "
                                "completed epoch (same options required; starts afresh if the file is absent)."),
    force: bool = typer.Option(False, help="Overwrite an existing output (starting a new run)."),
) -> None:
    """Fine-tune a CNN and a head together from images (triplet embedding or hash codes). Runs under torchrun for
    data parallelism: `torchrun --nproc_per_node N -m deephash_cli finetune ...` (see docs/finetune.md)."""
    from deephash_cli.finetune import run_finetune
    from deephash_cli.hashing import HashOptions
    from deephash_cli.ui import stderr_console

    mean_rgb, std_rgb = lists.channels(lists.MEAN, mean), lists.channels(lists.STD, std)
    margins = lists.MARGINS.parse(margin)
    if len(margins) > 1:
        raise DeephashError(f"--margin '{margin}': fine-tuning trains one model, give one margin; choose it with "
                            f"train-triplet's margin search on extracted features")
    _pixel_limit(max_image_pixels)
    seed_list = _seed_list(ctx, seeds)
    options = _train_options(epochs, batch_size, lr, optimizer, weight_decay, seed, early_stopping, miner,
                             classes_per_batch, samples_per_class, lr_milestones=lr_milestones, lr_gamma=lr_gamma)
    hash_options = HashOptions(alpha=alpha, lam=lam, lam_warmup=lam_warmup, alpha_ramp=alpha_ramp,
                               margin=ranking_margin, continuation=continuation, ftde_every=ftde_every,
                               ftde_triplets=ftde_triplets)
    options.check()
    hash_options.check()
    out = output or _default_output(f"{dataset}-{backbone}.finetune-{objective}.model.h5")
    loss_options = _loss_options(beta, beta_init, beta_lr, npair_reg)

    def train(path: Path, run_seed: int) -> Optional[Path]:
        summary = run_finetune(path, objective=objective, dataset=dataset, data_dir=data_dir, backbone=backbone,
                               weights=weights, image_size=image_size, mean=mean_rgb, std=std_rgb,
                               limit_per_class=limit_per_class, test_fraction=test_fraction, split_seed=split_seed,
                               head=head, dim=dim, hidden=hidden, loss=loss, margin=margins[0], bits=bits,
                               method=method, hash_options=hash_options, val_fraction=val_fraction,
                               options=dataclasses.replace(options, seed=run_seed), lr_backbone=lr_backbone,
                               freeze_bn=freeze_bn, amp=amp, device=device, workers=workers,
                               eval_batch_size=eval_batch_size, resume=resume, force=force, init=init,
                               loss_options=loss_options, split=split, memory_check=memory_check)
        if summary["world_size"] > 1 and summary.get("rank", 0) != 0:
            return None
        prefix = f"seed {run_seed}: " if seed_list is not None else ""
        stderr_console().print(f"{prefix}best val mAP {summary['best_val_map']:.4f} at epoch {summary['best_epoch']} "
                               f"({summary['epochs_done']} epochs, {summary['seconds_per_epoch'] or 0:.1f} s/epoch)")
        return path

    if seed_list is not None:
        # --resume continues each seed's checkpoint where there is one (and starts the others afresh).
        _each_seed(ctx, seed_list, {"output": out}, force or resume,
                   lambda run_seed, paths: train(paths["output"], run_seed))
        return
    if train(out, seed) is not None:
        typer.echo(str(out))


# --------------------------------------------------------------------------- index / search


def _index_types_help() -> str:
    from deephash_cli.faiss_index import INDEX_TYPES

    return "; ".join(f"{name}: {what} ({cls})" for name, (_, cls, what) in INDEX_TYPES.items())


def _tie_orders_help() -> str:
    from deephash_cli.ties import TIE_ORDERS

    return "; ".join(f"{name}: {what}" for name, what in TIE_ORDERS.items())


@command("index")
def index(
    ctx: typer.Context,
    artifact: Path = typer.Argument(..., help="A codes, embeddings or features artifact to index; with --add, the "
                                    "index to extend." + STREAM_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output index artifact. Default: "
                                          "artifacts/<artifact>.index-<type>.h5; with --add, the index itself "
                                          "(rewritten atomically)."),
    add: Optional[Path] = typer.Option(None, "--add", help="Append the items of this artifact (new images, made by "
                                       "the same encoder: backbone, weights, head, bits) to the index ARTIFACT."),
    splits: Optional[str] = typer.Option(None, metavar=lists.INDEX_SPLITS.metavar, help="Comma-separated splits "
                                         f"to put in the database, each given once: {lists.SPLIT_NAMES}. Default: "
                                         "train,val (val when present), as evaluate's database; with --add every "
                                         "split of the new artifact. An empty item is an error."),
    index_type: str = typer.Option("flat", "--type", help="Index type. " + _index_types_help() + "; or "
                                   "factory:STRING, a faiss factory string (index_binary_factory for codes)."),
    metric: Optional[str] = typer.Option(None, help="Floats: l2 (squared euclidean, evaluate's default) or cosine "
                                         "(1 − cos). Codes: hamming (the only choice). Default: hamming for codes, "
                                         "l2 for floats."),
    nlist: Optional[int] = typer.Option(None, help="ivf/ivfpq: inverted lists (default about 4·√n, at most n/39)."),
    hnsw_m: int = typer.Option(32, help="hnsw: graph neighbours per node."),
    nhash: Optional[int] = typer.Option(None, help="hash: hash tables (default bits/hash-bits)."),
    hash_bits: Optional[int] = typer.Option(None, help="hash: bits per table key (default 16, at most the code "
                                            "length)."),
    pq_m: Optional[int] = typer.Option(None, help="ivfpq: sub-quantisers, bytes per item (default the largest "
                                       "divisor of the dimension up to dim/8)."),
    tie_order: str = typer.Option("shuffled", "--tie-order", help="The order items enter the index, which is "
                                  "the order equal distances come back in. " + _tie_orders_help() + ". With "
                                  "--add: the index's own (new items go after the old ones)."),
    seed: int = typer.Option(0, help="Seed of --tie-order shuffled."),
    force: bool = typer.Option(False, help="Overwrite an existing output."),
) -> None:
    """Build a faiss index over a collection (the database splits of a codes/embeddings/features artifact), or
    --add newly extracted items to one. The index records the encoder that makes queries from images."""
    from deephash_cli.search_stages import run_index, run_index_add
    from deephash_cli.ties import TIE_ORDERS

    if tie_order not in TIE_ORDERS:
        raise DeephashError(f"unknown --tie-order '{tie_order}'; valid: {', '.join(TIE_ORDERS)}")
    if seed < 0:
        raise DeephashError(f"--seed must be an integer ≥ 0, got {seed}")
    if add is not None and (_given(ctx, "tie_order") or _given(ctx, "seed")):
        raise DeephashError("--tie-order and --seed are fixed when the index is built; --add uses the index's own "
                            "(see deephash info)")
    split_names = lists.INDEX_SPLITS.parse(splits) if splits is not None else None
    with _streams() as io:
        source = io.input(artifact)
        if add is not None:
            out = output or source
            summary = run_index_add(source, io.input(add), out, splits=split_names, force=force)
            stderr = f"added {summary['added']} items: {summary['items']} in the index (ties {summary['ties']})"
        else:
            out = output or _default_output(f"{io.stem(artifact)}.index-{index_type.replace(':', '-')}.h5")
            summary = run_index(source, out, splits=split_names or ["train", "val"], index_type=index_type,
                                metric=metric,
                                parameters=dict(nlist=nlist, hnsw_m=hnsw_m, nhash=nhash, hash_bits=hash_bits,
                                                pq_m=pq_m), tie_order=tie_order, seed=seed, force=force)
            stderr = (f"indexed {summary['items']} items ({summary['type']}, {summary['bytes']:,} bytes, ties "
                      f"{summary['ties']}; train {summary['train']:.2f} s, add {summary['add']:.2f} s)")
        from deephash_cli.ui import stderr_console

        stderr_console().print(stderr, soft_wrap=True)
        typer.echo(str(out))


@command("search")
def search(
    index_file: Path = typer.Argument(..., metavar="INDEX", help="An index artifact (deephash index)."),
    images: Optional[List[str]] = typer.Argument(None, metavar="[QUERY]...", help="Query image files or folders "
                                                 "(searched recursively); encoded with the index's own encoder."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Query with a split of a codes/embeddings/"
                                           "features artifact (made by the index's encoder) instead of images."),
    query_split: str = typer.Option("test", help="The split of --queries to use."),
    k: int = typer.Option(10, "-k", "--k", help="Results per query."),
    nprobe: Optional[int] = typer.Option(None, help="ivf/ivfpq: inverted lists visited (faiss default 1)."),
    ef: Optional[int] = typer.Option(None, help="hnsw: search breadth efSearch (faiss default 16)."),
    nflip: Optional[int] = typer.Option(None, help="hash: bits flipped per table key (faiss default 0)."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout, one object per query."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Also draw each query with its top-k thumbnails "
                                        "(class under each; green/red frame when the query's class is known) "
                                        "into this PNG (first 20 queries)."),
    html_dir: Optional[Path] = typer.Option(None, "--html", help="Also write a static page DIR/index.html with "
                                            "the same (thumbnails in DIR/thumbs)."),
    check_recall: bool = typer.Option(False, "--check-recall", help="Print recall@k against exact (flat) search "
                                      "over the stored item vectors (Hamming: ties at the k-th distance count)."),
    tie_counts: bool = typer.Option(True, "--tie-counts/--no-tie-counts", help="Flat indexes: count the items at "
                                    "exactly the k-th result's distance and closer (JSON tied_at_kth, "
                                    "closer_than_kth; a line under the table, grid and page when the k results "
                                    "are a choice among tied items). One more scan of the index per query."),
    skip_corrupt: bool = typer.Option(False, help="Leave out query images that fail to decode (warned) instead of "
                                      "stopping at the first."),
    batch_size: int = typer.Option(64, help="Query images per forward pass."),
    runtime: str = typer.Option("eager", help="How the query encoder runs: eager (PyTorch) or onnx (ONNX Runtime, "
                                "float32, CPU; `pip install 'deephash[onnx]'`). int8 is extract-only: its "
                                "calibration images are not part of the index."),
    max_image_pixels: int = MAX_PIXELS,
    device: str = DEVICE,
    force: bool = typer.Option(False, help="Overwrite an existing --grid PNG or --html page."),
) -> None:
    """Search an index: the k most similar items of each query image (or artifact item), as a table (stdout),
    JSON lines, a PNG grid or an HTML page."""
    from deephash_cli.backbones import resolve_device
    from deephash_cli.search_stages import print_results, run_search

    _pixel_limit(max_image_pixels)
    from deephash_cli.artifacts import check_outputs_differ

    check_outputs_differ({"--grid": grid, "--html": html_dir / "index.html" if html_dir is not None else None})
    for target in (grid, html_dir / "index.html" if html_dir is not None else None):
        if target is not None and os.path.lexists(target) and not force:
            raise DeephashError(f"{target} exists; pass --force to overwrite it")
    result = run_search(index_file, images=list(images or []), queries_path=queries, query_split=query_split, k=k,
                        nprobe=nprobe, ef=ef, nflip=nflip, skip_corrupt=skip_corrupt, check_recall=check_recall,
                        batch_size=batch_size, device=resolve_device(device), runtime=runtime,
                        tie_counts=tie_counts)
    if as_json:
        for query in result["queries"]:
            typer.echo(json.dumps(query))
    else:
        print_results(result, typer.echo)
    if grid is not None:
        from deephash_cli.gallery import save_grid

        save_grid(result, grid, force=force)
    if html_dir is not None:
        from deephash_cli.gallery import save_html

        save_html(result, html_dir, force=force)
    if "recall" in result:
        from deephash_cli.search_stages import print_recall

        print_recall(result)
        if as_json:
            typer.echo(json.dumps({"recall": result["recall"]}))


# --------------------------------------------------------------------------- info / report


@command("info")
def info(
    file: Path = typer.Argument(..., help="Any deephash artifact." + STREAM_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the text view."),
) -> None:
    """What an artifact holds and how it was made: kind, splits, classes, key config, recorded evaluations and
    the provenance chain back to the dataset (each parent's SHA-256 checked: ok, changed or missing).

    Unlike the other commands, info's text view is its product, so it goes to stdout (not stderr).
    """
    from deephash_cli.info import describe, render

    with _streams() as io:
        details = describe(io.input(file))
    typer.echo(json.dumps(details, indent=2, default=str) if as_json else render(details))


@command("report")
def report(
    folder: Path = typer.Argument(..., help="Folder of artifacts (*.h5) and their <artifact>.evals.json records."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output markdown file. Default: "
                                          "<FOLDER>/report.md. Figures go next to it as <stem>.map-vs-bits.png, "
                                          "<stem>.miner-convergence.png and <stem>.tsne-grid.png."),
    recursive: bool = typer.Option(False, "--recursive", help="Also scan subfolders."),
    force: bool = typer.Option(False, help="Overwrite an existing report and figures."),
) -> None:
    """One markdown table of every artifact in a folder with its recorded evaluations (mAP, kNN, P@100), cost,
    thread count and producing command, plus mAP-vs-bits, miner-convergence and t-SNE figures. Artifacts that
    differ only in their seed share a row: mean ± sample std and n (error bars in the figures). Nothing is
    recomputed."""
    from deephash_cli.report import build_report

    result = build_report(folder, output or folder / "report.md", recursive=recursive, force=force)
    for skipped in result["skipped"]:
        typer.echo(f"warning: skipped {skipped['file']}: {skipped['reason']}", err=True)
    typer.echo(result["report"])


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
