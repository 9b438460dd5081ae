"""The command line: flags -> Options, then `program` (which raises) runs the pipeline; `main`
maps exceptions to one-line messages and exit codes. The one module that imports typer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from dsocr_cli import __version__, interrupt
from dsocr_cli.console import ConsoleEvents, Environment, setup_logging
from dsocr_cli.errors import DsocrError, ExitCode, NoInputError, UsageError
from dsocr_cli.options import (
    DEFAULT_MODE,
    DEFAULT_MODEL,
    MODES,
    TASK_PROMPTS,
    EngineOptions,
    Options,
    OutputOptions,
    RenderOptions,
    TaskOptions,
    parse_pages,
    settings_record,
    with_engine,
)

log = logging.getLogger("dsocr")

EXIT_CODES = """Exit codes: 0 all inputs done · 1 some inputs failed (the rest done) · 2 usage error ·
3 no usable input · 4 setup error before any page (model, device, output folder) ·
5 internal error · 6 another run holds the output folder · 130 interrupted (SIGINT/SIGTERM)."""

app = typer.Typer(
    name="dsocr",
    help="Batch OCR with DeepSeek-OCR: PDFs, images and folders to markdown, layout boxes and JSON.\n\n" + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
ENV: Environment | None = None  # tests may set their own; otherwise each command isolates stdout

Out = Annotated[str | None, typer.Option("-o", "--output", help="Output folder; '-' or none: markdown to stdout.")]
Dpi = Annotated[float, typer.Option(help="PDF rendering resolution.", min=36, max=600)]
Pages = Annotated[str | None, typer.Option(help="Pages to process, 1-based: 1-3,7,10-")]
Password = Annotated[str | None, typer.Option(help="Password of encrypted PDFs.")]
Model = Annotated[str, typer.Option(help="Hub id or local checkpoint folder.")]
Revision = Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit) of --model.")]
Device = Annotated[str, typer.Option(help="auto, cuda, cpu or mps (auto: cuda when available).")]
Dtype = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32.")]
Mode = Annotated[str, typer.Option(help=f"Resolution preset: {', '.join(MODES)}.")]
Task = Annotated[str, typer.Option(help=f"What to ask the model: {', '.join(TASK_PROMPTS)}.")]
Prompt = Annotated[str | None, typer.Option(help="A custom prompt (overrides --task).")]
MaxNew = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Generation limit per page.")]
Batch = Annotated[int | None, typer.Option("--batch-size", min=1, help="Pages per batch (default: by device).")]
Engine = Annotated[str, typer.Option(help="Inference engine.")]
TrustRemote = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow a checkpoint's own Python code to run (engine infer).")
]
Force = Annotated[bool, typer.Option("--force", help="Redo documents already done with the same settings.")]
Decoder = Annotated[
    str,
    typer.Option(
        help="slots: continuous batching (finished pages free their slot at once); generate: transformers' "
        "generate per batch."
    ),
]
Retry = Annotated[
    bool, typer.Option("--retry/--no-retry", help="Retry once a page that loops or hits --max-new-tokens.")
]
Wait = Annotated[bool, typer.Option("--wait", help="If another run holds OUT, wait for it instead of exiting 6.")]
Searchable = Annotated[
    bool, typer.Option("--searchable-pdf", help="Also write searchable.pdf: the input with an invisible text layer.")
]
LayoutPdf = Annotated[bool, typer.Option("--layout-pdf", help="Also write layout.pdf: the annotated pages.")]
Report = Annotated[
    bool, typer.Option("--report/--no-report", help="Write OUT/report.html: every input, each page beside its text.")
]
FigureDpi = Annotated[float, typer.Option("--figure-dpi", min=72, max=1200, help="DPI of PDF figure crops.")]
Workers = Annotated[
    str,
    typer.Option(
        help="Engine processes on this host: N, or auto (one per visible GPU, CUDA_VISIBLE_DEVICES chooses; "
        "one without a GPU). With --ray: at most N actors."
    ),
]
Ray = Annotated[
    str | None,
    typer.Option(help="Run the workers as actors of this Ray cluster (auto, host:port, ray://host:10001)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print the run summary as JSON on stdout (needs -o).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only on stderr (for cron).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")]


def build_options(f: dict) -> Options:
    """The command's flag values (by parameter name) -> typed, validated Options."""
    if f["mode"] not in MODES:
        raise UsageError(f"unknown --mode {f['mode']!r}", f"choose one of: {', '.join(MODES)}")
    if f["decoder"] not in ("slots", "generate"):
        raise UsageError(f"unknown --decoder {f['decoder']!r}", "choose slots or generate")
    if f["task"] not in TASK_PROMPTS:
        raise UsageError(f"unknown --task {f['task']!r}", f"choose one of: {', '.join(TASK_PROMPTS)}")
    out = f["output"]
    return Options(
        render=RenderOptions(dpi=f["dpi"], pages=parse_pages(f["pages"]), password=f["password"]),
        engine=EngineOptions(
            engine=f["engine"],
            model=f["model"],
            revision=f["revision"],
            device=f["device"],
            dtype=f["dtype"],
            mode=f["mode"],
            max_new_tokens=f["max_new_tokens"],
            batch_size=f["batch_size"],
            trust_remote_code=f["trust_remote_code"],
            retry_unfinished=f["retry"],
            decoder=f["decoder"],
            workers=parse_workers(f["workers"]),
            ray=f["ray"],
        ),
        task=TaskOptions(name=f["task"], prompt=f["prompt"]),
        output=OutputOptions(
            out=None if out in (None, "-") else Path(out),
            force=f["force"],
            wait=f["wait"],
            searchable_pdf=f["searchable_pdf"],
            layout_pdf=f["layout_pdf"],
            figure_dpi=f["figure_dpi"],
            report=f["report"],
        ),
    )


def parse_workers(value: str) -> int | None:
    """`auto` -> None (decided by the GPUs there are), else a positive count."""
    if value.strip().lower() == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise UsageError(f"invalid --workers {value!r}", "give a positive number or auto")
    return count


def program(
    env: Environment, paths: list[str], options: Options, want=None, json_summary=False, quiet=False
) -> ExitCode:
    """Run dsocr on `paths`; raises DsocrError for setup problems, returns the exit code otherwise."""
    from dsocr_cli.discover import discover, expand_arguments
    from dsocr_cli.engines import start_engine
    from dsocr_cli.writers.stdout import StdoutOutput
    from dsocr_cli.writers.tree import TreeOutput

    if json_summary and options.output.to_stdout:
        raise UsageError("--json prints the summary on stdout, where the markdown would go", "add -o OUT")
    if options.output.to_stdout and (options.output.searchable_pdf or options.output.layout_pdf):
        raise UsageError("--searchable-pdf and --layout-pdf write files", "add -o OUT")
    if options.task.prompt is not None and options.task.text.count("<image>") != 1:
        raise UsageError("--prompt may hold <image> once at most", "the page is the prompt's one image")
    events = ConsoleEvents(env, quiet)
    sources, rejected = discover(expand_arguments(paths, env.stdin), want, exclude=options.output.out)
    for item in rejected:
        events.rejected(item)
    if not sources:
        raise NoInputError(
            "no input to process" + (f" ({len(rejected)} rejected)" if rejected else ""),
            "give PDFs, images or folders holding them",
        )
    if options.output.out:
        output = TreeOutput(options.output.out, options.output, options.render.password)
    else:
        output = StdoutOutput(env.data, sources)
    try:
        events.model_loading(options.engine.model)
        engine = start_engine(options.engine, events)
        try:
            if options.engine.engine == "auto":
                options = with_engine(options, engine.name)  # recorded as the engine it chose
            return _run_pipeline(env, options, engine, output, events, sources, rejected, json_summary)
        finally:
            if hasattr(engine, "close"):
                engine.close()  # a worker pool: every worker stops, none is left behind
    finally:
        output.close()


def _run_pipeline(env, options, engine, output, events, sources, rejected, json_summary) -> ExitCode:
    from dsocr_cli.pipeline import Pipeline, exit_code
    from dsocr_cli.render import page_count
    from dsocr_cli.writers.summary import summary_record

    pipeline = Pipeline(options, engine, output, events)
    counts = {s: page_count(s, options.render) for s in sources} if events.counts_pages else None
    events.run_started(len(sources), counts)
    try:
        summary = pipeline.run(sources)
    except KeyboardInterrupt:
        summary = pipeline.summary
        summary.interrupted = True
    if interrupt.received():  # a signal whose KeyboardInterrupt was lost after the run's last step
        summary.interrupted = True
    code = exit_code(summary, rejected)
    record = summary_record(summary, rejected, settings_record(options), int(code))
    if hasattr(engine, "stats"):
        record["engine"] = engine.stats()
    path = output.write_summary(record)
    if json_summary:
        env.data.write(json.dumps(record, ensure_ascii=False) + "\n")
        env.data.flush()
    log.info(
        "%d done, %d failed, %d pages in %.1f s%s",
        record["documents"]["done"],
        record["documents"]["failed"],
        record["pages"],
        record["seconds"],
        f"; summary: {path}" if path else "",
    )
    return code


def _execute(verbose: bool, quiet: bool, body) -> None:
    """Run a command body and turn its outcome into an exit code and at most one error line."""
    env = ENV or Environment.isolate_stdout()
    setup_logging(env, verbose, quiet)
    interrupt.install()
    try:
        code = body(env)
        if interrupt.received():  # a signal whose KeyboardInterrupt was lost on the way
            code = ExitCode.INTERRUPTED
    except DsocrError as exc:
        log.error("%s", exc.one_line(), exc_info=verbose)
        code = exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        code = ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: one line unless --verbose
        log.error(
            "internal error: %s: %s (rerun with --verbose for the traceback)",
            type(exc).__name__,
            exc,
            exc_info=verbose,
        )
        code = ExitCode.INTERNAL
    finally:
        env.data.flush()
    raise typer.Exit(int(code))


def _ocr_command(name: str, want, help_text: str):
    def command(
        paths: Annotated[list[str], typer.Argument(help="Files, folders, or '-' for paths on stdin.")],
        output: Out = None,
        dpi: Dpi = 144.0,
        pages: Pages = None,
        password: Password = None,
        model: Model = DEFAULT_MODEL,
        revision: Revision = None,
        device: Device = "auto",
        dtype: Dtype = "auto",
        mode: Mode = DEFAULT_MODE,
        task: Task = "markdown",
        prompt: Prompt = None,
        max_new_tokens: MaxNew = 8192,
        batch_size: Batch = None,
        engine: Engine = "hf",
        trust_remote_code: TrustRemote = False,
        force: Force = False,
        retry: Retry = True,
        decoder: Decoder = "slots",
        workers: Workers = "auto",
        ray: Ray = None,
        wait: Wait = False,
        searchable_pdf: Searchable = False,
        layout_pdf: LayoutPdf = False,
        figure_dpi: FigureDpi = 300.0,
        report: Report = True,
        json_summary: Json = False,
        quiet: Quiet = False,
        verbose: Verbose = False,
    ) -> None:
        flags = dict(locals())

        def body(env: Environment) -> ExitCode:
            return program(env, paths, build_options(flags), want, json_summary, quiet)

        _execute(verbose, quiet, body)

    command.__doc__ = help_text
    app.command(name, epilog=EXIT_CODES)(command)


_ocr_command("pdf", "pdf", "OCR PDF files (rendered with PyMuPDF) or the PDFs found in folders.")
_ocr_command("image", "image", "OCR images (jpg, png, webp, tiff, bmp, gif); TIFF frames become pages.")
_ocr_command("run", None, "OCR files and folders of any supported kind, told by content; '-' reads paths from stdin.")


@app.command(epilog=EXIT_CODES)
def selftest(
    save_model: Annotated[Path | None, typer.Option(help="Keep the tiny model here (usable with --model).")] = None,
    verbose: Verbose = False,
) -> None:
    """Prove the install: a tiny random-weight DeepSeek-OCR-2 runs a PDF and an image end to end."""
    from dsocr_cli.selftest import run_selftest

    _execute(verbose, False, lambda env: run_selftest(env, save_model))


@app.command(epilog=EXIT_CODES)
def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    verbose: Verbose = False,
) -> None:
    """Check this machine: OS, Python, torch and its CUDA build, the GPU, bf16, transformers, the model cache."""
    from dsocr_cli.doctor import run_doctor

    _execute(verbose, False, lambda env: ExitCode(run_doctor(env.data, json_output)))


@app.command(epilog=EXIT_CODES)
def report(
    out: Annotated[Path, typer.Argument(help="An output folder written with -o (or several merged).")],
    wait: Wait = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Rebuild OUT/report.html and every document's page view from the output tree alone."""
    from dsocr_cli.writers.report import rebuild_report

    _execute(verbose, quiet, lambda env: rebuild_report(out, wait))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    """The `dsocr` script (pyproject) and `python -m dsocr_cli`; each command maps its own errors to exit codes."""
    app()


__all__ = ["app", "main", "program"]
