"""What a person sees: one-line usage errors with a suggestion, help on every option, the first
line naming the config and the bucket, a fatal error printed once, ``--quiet``, text store
retries on a terminal, read-only commands that never create a bucket, mistyped settings keys."""

from __future__ import annotations

import argparse
import io
import json
import logging

import pytest

from processor.cli.console import NO_CONFIG, Parser
from processor.cli.main import build_parser, main
from processor.errors import EXIT_CONFIG, EXIT_DOCTOR, EXIT_STORE, EXIT_USAGE, TransientStoreError
from processor.log import configure_logging
from processor.store.retry import RetryPolicy
from testkit.images import photo_bytes
from tests.cli_project import cli_project


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with a config and a photo, and no bucket yet; no PROCESSOR_ variable but the
    session's metrics port."""
    return cli_project(tmp_path, monkeypatch, {"cow.jpg": photo_bytes(96, 80)})


def usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err  # one line, no usage
    return captured.err


# --------------------------------------------------------------------------- the parser


def test_a_mistyped_option_gets_a_suggestion(capsys) -> None:
    err = usage_error(["run", "--oncee"], capsys)
    assert err.startswith("processor run: unknown option --oncee: did you mean --once?")


def test_an_abbreviation_is_not_taken_for_the_option(capsys) -> None:
    assert "unknown option --on: did you mean --once?" in usage_error(["run", "--on"], capsys)


def test_a_mistyped_command_gets_a_suggestion(capsys) -> None:
    assert "unknown command 'stauts': did you mean status?" in usage_error(["stauts"], capsys)


def test_a_mistyped_nested_and_grouped_option(capsys) -> None:
    assert "unknown option --dry-runn: did you mean --dry-run?" in usage_error(["models", "pull", "--dry-runn"], capsys)
    assert "did you mean --fresh?" in usage_error(["finetune", "--name", "n", "--base", "b", "--frsh"], capsys)


def test_a_missing_argument_is_one_line_too(capsys) -> None:
    err = usage_error(["results"], capsys)
    assert "the following arguments are required: KEY, --out" in err and "processor results --help" in err


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    commands = parser.commands if isinstance(parser, Parser) else None
    for sub in (commands.choices.values() if commands is not None else ()):
        found += _parsers(sub)
    return found


def test_every_option_and_argument_has_help_text() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) > 12  # every command (models pull is nested) was walked
    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in parsers for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert missing == []


# --------------------------------------------------------------------------- where am I


def test_the_first_line_names_the_config_file_and_the_bucket(project, capsys) -> None:
    assert main(["run", "--once", "--log-format", "text"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (f"using config {project / 'config.yaml'} + environment metrics.port; "
                     f"store local directory {project / 'bucket'}")


def test_without_a_config_file_it_says_built_in_defaults(project, capsys) -> None:
    (project / "config.yaml").unlink()
    assert main(["process", "photos", "--out", "out", "-q", "--log-level", "INFO", "--log-format", "text"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first == f"using config {NO_CONFIG} + environment metrics.port"  # process reads no bucket


@pytest.mark.parametrize(("argv", "names_store"), [
    (["submit", "photos"], True),
    (["retry", "--dry-run"], True),
    (["results", "cow.jpg", "--out", "got"], True),
    (["doctor"], True),
    (["models", "pull", "--dry-run"], False),
    (["mask", "photos", "--out", "masks", "--grabcut"], False),
])
def test_every_command_starts_with_where_it_is(project, capsys, argv, names_store) -> None:
    assert main(["submit", "photos", "-q"]) == 0  # a bucket to read
    capsys.readouterr()
    main([*argv, "--log-format", "text"])
    first = capsys.readouterr().err.splitlines()[0]
    using = f"using config {project / 'config.yaml'} + environment metrics.port"
    assert first == (f"{using}; store local directory {project / 'bucket'}" if names_store else using)


def test_the_first_line_never_shows_credentials(project, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PROCESSOR_STORE__KIND", "s3")
    monkeypatch.setenv("PROCESSOR_STORE__BUCKET", "toys")
    monkeypatch.setenv("PROCESSOR_STORE__ENDPOINT_URL", "http://AKIDKEY:hunter2@127.0.0.1:1")
    monkeypatch.setenv("PROCESSOR_STORE__COMMAND_TIMEOUT_S", "5")
    main(["results", "cow.jpg", "--out", "got", "--log-format", "json"])
    err = capsys.readouterr().err
    using = json.loads(err.splitlines()[0])
    assert using["event"] == "using" and using["store"] == "s3://toys at http://127.0.0.1:1"
    assert "store.endpoint_url" in using["config"] and "hunter2" not in err and "AKIDKEY" not in err


def test_status_says_it_in_its_header(project, capsys) -> None:
    assert main(["submit", "photos", "-q"]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"config: {project / 'config.yaml'} + environment metrics.port",
                       f"store: local directory {project / 'bucket'}"]
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["config"].startswith(str(project / "config.yaml")) and status["inputs"] == 1


@pytest.mark.parametrize(("argv", "code"), [
    (["status"], EXIT_STORE),
    (["results", "cow.jpg", "--out", "got"], EXIT_STORE),
    (["retry", "--dry-run"], EXIT_STORE),
    (["retry"], EXIT_STORE),
    (["doctor"], EXIT_DOCTOR),
])
def test_a_read_only_command_never_creates_the_bucket(project, capsys, argv, code) -> None:
    assert main([*argv, "--log-format", "text"]) == code
    captured = capsys.readouterr()
    said = captured.err if code == EXIT_STORE else captured.out
    assert f"no bucket at {project / 'bucket'} (store.root: bucket): the directory does not exist" in said
    assert "`processor submit PHOTOS`" in said and f"`mkdir -p {project / 'bucket'}`" in said
    assert not (project / "bucket").exists() and not (project / "got").exists()


def test_a_writing_command_creates_the_bucket(project) -> None:
    assert main(["submit", "photos", "-q"]) == 0
    assert (project / "bucket/inputs/cow.jpg").exists()


# --------------------------------------------------------------------------- errors, once


def test_a_fatal_error_is_one_text_line(project, capsys) -> None:
    assert main(["status", "--log-format", "text"]) == EXIT_STORE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no bucket at "), err


def test_a_fatal_error_is_one_json_event(project, capsys) -> None:
    assert main(["status", "--log-format", "json"]) == EXIT_STORE
    (line,) = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert (event["event"], event["error"], event["exit_code"]) == ("fatal", "StoreAccessError", EXIT_STORE)
    assert event["detail"].startswith("no bucket at ")


def test_a_config_error_is_printed_once_in_the_format_asked(project, capsys) -> None:
    (project / "config.yaml").write_text("run: {styels: [toon]}\n")
    assert main(["status", "--log-format", "text"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "unknown setting run.styels: did you mean run.styles?" in err


def test_a_mistyped_environment_key_names_the_closest_setting(project, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PROCESSOR_RUN__STYELS", "toon")
    assert main(["status", "--log-format", "text"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("error:") == 1, err
    assert "unknown setting run.styels: did you mean run.styles?" in err and "PROCESSOR_RUN__STYELS" in err


def test_an_extra_imported_where_nobody_checked_is_one_line(project, capsys, monkeypatch) -> None:
    """The dispatch's net: any import of an extra's module that no command checked up front."""
    import processor.cli.bucket as bucket_command

    def needs_diffusers(*_args: object) -> int:
        raise ModuleNotFoundError("No module named 'diffusers'", name="diffusers")

    monkeypatch.setattr(bucket_command, "cmd_status", needs_diffusers)
    assert main(["status", "-q"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err == ('error: processor status needs the sd extra (diffusion styles, captions and hub models), which '
                   'is not installed (no module diffusers): pip install -e ".[sd]"\n')


def test_an_import_error_that_is_a_bug_stays_a_traceback(project, monkeypatch) -> None:
    import processor.cli.bucket as bucket_command

    def broken(*_args: object) -> int:
        raise ModuleNotFoundError("No module named 'processor.nowhere'", name="processor.nowhere")

    monkeypatch.setattr(bucket_command, "cmd_status", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["status"])

    def too_old(*_args: object) -> int:  # the package is there, the name is not: a version problem
        raise ImportError("cannot import name 'FluxPipeline' from 'diffusers'", name="diffusers")

    monkeypatch.setattr(bucket_command, "cmd_status", too_old)
    with pytest.raises(ImportError, match="FluxPipeline"):
        main(["status"])


# --------------------------------------------------------------------------- log lines


def test_quiet_prints_no_log_lines(project, capsys) -> None:
    assert main(["submit", "photos", "-q"]) == 0
    assert main(["run", "--once", "-q"]) == 0
    err = capsys.readouterr().err
    assert err == ""


def test_quiet_errors_are_text_even_off_a_terminal(project, capsys) -> None:
    assert main(["status", "-q"]) == EXIT_STORE  # capsys is no terminal: auto would be JSON
    assert capsys.readouterr().err.startswith("error: no bucket at ")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_store_retries_of_a_command_on_a_terminal_are_sentences() -> None:
    stream = Terminal()
    configure_logging("INFO", "auto", stream=stream, timestamps=False)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise TransientStoreError("s3://toys: list 'inputs/': ReadTimeoutError", key="inputs/")
        return "answered"

    assert RetryPolicy(3, 0.01, sleep=lambda _s: None).call(flaky, op="list", key="inputs/") == "answered"
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("store: list 'inputs/' failed (TransientStoreError); attempt 1 of 3, next in ")


def test_a_daemon_on_a_terminal_keeps_its_time_stamps() -> None:
    stream = Terminal()
    configure_logging("INFO", "auto", stream=stream, timestamps=True)
    logging.getLogger("processor.worker").info("scanned", extra={"inputs": 3})
    line = stream.getvalue().strip()
    assert line[2] == ":" and line[5] == ":" and line.endswith("info    scanned  inputs=3")


def test_off_a_terminal_log_lines_are_json() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "auto", stream=stream, timestamps=False)
    logging.getLogger("processor.worker").info("scanned", extra={"inputs": 3})
    assert json.loads(stream.getvalue())["inputs"] == 3


# --------------------------------------------------------------------------- the extras table

#: Distributions whose import name is not their name with "-" as "_".
_IMPORT_NAME = {"clip-interrogator": "clip_interrogator", "open_clip_torch": "open_clip", "ibm-cos-sdk": "ibm_boto3"}


def test_the_extras_table_names_every_package_of_each_extra() -> None:
    """``processor.cli.extras`` translates an import of any of an extra's packages: a package added
    to an extra in pyproject.toml must be added to its table too."""
    import re
    from pathlib import Path

    from processor.cli.extras import CORE_MODULES, EXTRA_MODULES, Extra

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for extra in Extra:
        dists = [re.split(r"[<>=!~\[;\s]", req, maxsplit=1)[0] for req in extras[extra.value]]
        modules = {_IMPORT_NAME.get(d, d.replace("-", "_").lower()) for d in dists}
        assert modules <= set(EXTRA_MODULES[extra]), (extra, modules - set(EXTRA_MODULES[extra]))
        assert set(CORE_MODULES[extra]) <= set(EXTRA_MODULES[extra])
