"""`dsocr selftest`: builds the tiny random-weight model and runs every stage on generated inputs,
reporting each stage's result, so an install is proven without downloading any weights.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from dsocr_cli.console import Environment
from dsocr_cli.errors import ExitCode, SetupError


def run_selftest(env: Environment, save_model: Path | None) -> ExitCode:
    """Runs each stage alone, printing its result on stdout, then the whole pipeline on the same inputs;
    a failed check raises SetupError, so a broken install exits 4 like any other setup problem."""
    from dsocr_cli import grounding
    from dsocr_cli.discover import discover
    from dsocr_cli.engines import load_engine
    from dsocr_cli.options import EngineOptions, Options, OutputOptions, TaskOptions
    from dsocr_cli.pipeline import Pipeline, exit_code
    from dsocr_cli.render import render
    from dsocr_cli.samples import make_image, make_pdf
    from dsocr_cli.tinymodel import build_tiny_model
    from dsocr_cli.writers.tree import TreeOutput

    def say(stage: str, result: str) -> None:
        env.data.write(f"{stage:<10} {result}\n")
        env.data.flush()

    with tempfile.TemporaryDirectory(prefix="dsocr-selftest-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        model_dir = build_tiny_model(save_model or work / "tiny-model")
        say("model", f"tiny random-weight DeepSeek-OCR-2 written to {model_dir}")
        inputs = [make_pdf(work / "in" / "two-pages.pdf", 2), make_image(work / "in" / "photo.png")]
        sources, rejected = discover([str(p) for p in inputs])
        say("discover", ", ".join(f"{s.key} ({s.kind})" for s in sources))
        options = Options(
            engine=EngineOptions(model=str(model_dir), device="cpu", max_new_tokens=24, batch_size=3),
            task=TaskOptions("markdown"),
            output=OutputOptions(out=work / "out"),
        )
        pages = [p for s in sources for p in render(s, options.render)]
        say("render", ", ".join(f"{p.source.key}#{p.number} {p.size[0]}x{p.size[1]}" for p in pages))
        engine = load_engine(options.engine)
        predictions = engine.predict(pages, options.task.text)
        say("engine", ", ".join(f"{p.tokens} tokens ({p.finish})" for p in predictions))
        parsed = [grounding.parse(pr.text, *pg.size) for pr, pg in zip(predictions, pages, strict=True)]
        say("grounding", ", ".join(f"{len(p.blocks)} block(s)" for p in parsed))
        summary = Pipeline(options, engine, TreeOutput(work / "out")).run(sources)
        files = sorted(str(f.relative_to(work / "out")) for f in (work / "out").rglob("*") if f.is_file())
        say("writers", f"{len(files)} files: " + ", ".join(files))
        code = exit_code(summary, rejected)
        checks = {
            "every page predicted": len(predictions) == len(pages) == 3,
            "documents done": summary.count("done") == 2 and code == ExitCode.OK,
            "markdown written": all((work / "out" / s.key / "document.md").is_file() for s in sources),
            "json readable": all(
                json.loads((work / "out" / s.key / "document.json").read_text())["page_count"] >= 1 for s in sources
            ),
        }
        for name, ok in checks.items():
            say("check", f"{'ok  ' if ok else 'FAIL'} {name}")
        if not all(checks.values()):
            raise SetupError("selftest failed", "rerun with --verbose and report the output")
        say("selftest", f"passed in {time.perf_counter() - started:.1f} s")
    return ExitCode.OK
