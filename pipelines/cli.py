"""The command line every job shares: grouped --help, unknown flags refused, one-line errors, true exit status.

A job's own flags live in its PipelineOptions classes; Beam's flags in Beam's. Anything that is neither
is a mistake the user must hear about (exit 2), not a warning a scheduler never reads.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import traceback
from typing import Callable, Iterable, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from dicom_io.errors import DicomflowError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEBUG_FLAG = "--debug"
BEAM_HELP_FLAG = "--help_beam"
RUNNER_HINT = """\
runner (Beam) options, most used:
  --runner R                  default: dicomflow's local runner (Beam's FnApiRunner, chosen explicitly);
                              DataflowRunner for Dataflow; PrismRunner to opt into Beam's Prism runner
  --direct_num_workers N      Beam worker processes (default 1: one in-process worker, whose pool of
                              forked processes uses every core, see --processes)
  --direct_running_mode M     in_memory (default) | multi_processing | multi_threading
  --project, --region, --temp_location, --setup_file, --sdk_container_image   Dataflow
every Beam option: {prog} --help_beam"""


class UsageError(SystemExit):
    """A flag or value the user has to change: one line on stderr (the message names the job), exit 2.

    A SystemExit, so that `run(argv)` called from Python stops the same way the command does.
    """


class JobFailed(Exception):
    """The job could not do its work for a reason said in one line (lock held, OUT not writable, ...)."""


class CliOptions(PipelineOptions):
    """How the command itself behaves (not the job)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(DEBUG_FLAG, action="store_true", help="Print the full traceback of an error")
        parser.add_argument(BEAM_HELP_FLAG, action="store_true", help="List every Beam option and exit")
        parser.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                            help="auto: a live bar on a terminal, a line every 10 s otherwise")


def beam_option_classes() -> list[type[PipelineOptions]]:
    """The PipelineOptions classes Beam itself defines (what Beam parses besides a job's own)."""
    found = {str(c): c for c in PipelineOptions.__subclasses__() if c.__module__.startswith("apache_beam.")}
    return list(found.values())


class _ParseError(Exception):
    pass


class _StrictParser(_BeamArgumentParser):
    """Beam's parser, raising instead of printing and exiting on a bad value."""

    def error(self, message):
        raise _ParseError(message)


def _flag_parser(classes: Iterable[type[PipelineOptions]]) -> argparse.ArgumentParser:
    parser = _StrictParser(add_help=False, allow_abbrev=False)
    for cls in classes:
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def _flags_of(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]  # pylint: disable=protected-access


def check_flags(job: str, argv: Sequence[str], own: Sequence[type[PipelineOptions]]) -> None:
    """Raise UsageError for a flag that neither this job nor Beam knows, or a stray positional argument."""
    parser = _flag_parser([*beam_option_classes(), *own, CliOptions])
    try:
        _, unknown = parser.parse_known_args(list(argv))
    except _ParseError as exc:  # a bad value: "argument --previews: invalid choice: 'x' (choose from ...)"
        raise UsageError(f"pipelines.{job}: {exc}") from exc
    for arg in unknown:
        if arg == "--":
            break
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, _flags_of(parser), n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]}?)" if close else " (--help lists the flags)"
            raise UsageError(f"pipelines.{job}: unknown option {flag}{hint}")
        raise UsageError(f"pipelines.{job}: unexpected argument {arg!r}: every value follows its flag, "
                         "as --name value or --name=value")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default unless it is None or False (those say nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def help_parser(prog: str, description: str, groups: Sequence[tuple[str, type[PipelineOptions]]]) -> argparse.ArgumentParser:
    """The job's --help: its own flags first, by group, then a pointer to Beam's."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Formatter,
                                     usage=f"{prog} --name value ... (the flags below, then any Beam option)",
                                     epilog=RUNNER_HINT.format(prog=prog), add_help=False)
    for title, cls in [*groups, ("command", CliOptions)]:
        group = parser.add_argument_group(title, (cls.__doc__ or "").strip().splitlines()[0])
        cls._add_argparse_args(group)  # pylint: disable=protected-access
    parser._action_groups[-1].add_argument("-h", "--help", action="help", help="Show this help and exit")
    return parser


def print_beam_help(prog: str) -> None:
    """Every option Beam defines, one section per Beam options class."""
    print(f"Beam options accepted by {prog} (the job's own: {prog} --help)\n")
    for cls in sorted(beam_option_classes(), key=lambda c: c.__name__):
        parser = _BeamArgumentParser(prog=prog, add_help=False, allow_abbrev=False, formatter_class=_Formatter)
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
        body = parser.format_help().split("\n", 1)[-1].strip()
        if body:
            print(f"{cls.__name__}:\n{body.replace('options:', '').strip()}\n")


_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Full|Held))(?::\s*(.*))?$")
_STEP = re.compile(r"\[while running '([^']+)'\]")


def _specific_names() -> set[str]:
    """Names of dicomflow's own exceptions: the ones whose message says what and where."""
    found, todo = set(), [DicomflowError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found


def one_line(exc: BaseException) -> str:
    """The cause of `exc` in one line, with the Beam step it happened in when known.

    dicomflow's own exceptions (dicom_io.errors) say what and where, so the deepest of them in the
    chain wins; else the root cause. A worker's failure reaches the launcher as a RuntimeError holding
    the worker's traceback as text: its `SomeError: message` lines are read the same way.
    """
    chain = [exc]
    while len(chain) < 20 and (chain[-1].__cause__ is not None or (
            chain[-1].__context__ is not None and not chain[-1].__suppress_context__)):
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    specific = _specific_names()
    texts = "\n".join(str(e) for e in chain)
    step = _STEP.search(texts)
    own = [e for e in chain if isinstance(e, DicomflowError)]
    root = own[-1] if own else chain[-1]
    message = f"{type(root).__name__}: {str(root).strip()}" if str(root).strip() else type(root).__name__
    lines = [m for m in (_ERROR_LINE.match(line) for line in texts.splitlines()) if m and m.group(2)]
    if not own and "\n" in str(root) and lines:
        chosen = [m for m in lines if m.group(1).rsplit(".", 1)[-1] in specific] or lines
        message = f"{chosen[-1].group(1).rsplit('.', 1)[-1]}: {chosen[-1].group(2)}"
    message = _STEP.sub("", message.splitlines()[0]).strip()
    where = f" (in step {step.group(1)})" if step else ""
    return (message if len(message) <= 600 else message[:600] + "...") + where


def main(job: str, run: Callable[[list[str]], object], argv: list[str],
         status: Callable[[list[str]], int] | None = None) -> int:
    """Run a job the way a terminal, cron or Composer needs: an exit status that tells the truth.

    0 when the job did all it was asked; 2 for a usage error; 1 for any failure, said in one line
    naming the job (the full traceback with --debug).
    """
    debug = DEBUG_FLAG in argv
    try:
        run(argv)
        return status(argv) if status is not None else EXIT_OK
    except JobFailed as exc:
        if debug:
            traceback.print_exc()
        print(f"pipelines.{job}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"pipelines.{job}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # usage errors (UsageError, validate's messages), --help
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_USAGE
        return int(exc.code or 0)
    except Exception as exc:  # the job failed: one line, the cause first
        if debug:
            traceback.print_exc()
        print(f"pipelines.{job}: failed: {one_line(exc)}", file=sys.stderr)
        if not debug:
            print(f"pipelines.{job}: (rerun with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return EXIT_FAILED
