"""Faults of the machine, not of the user: a full disk or a folder that cannot be written, told in
one line; SIGTERM and SIGINT during training, which stop it at the next step with a checkpoint
saved; the memory left before it runs out; and the warnings a CPU run always meets, which say
nothing to act on."""

from __future__ import annotations

import ast
import errno
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from metatune.console import is_main_process
from metatune.errors import MetatuneError

# errno -> what it says about the place being written
FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_memory() -> int | None:
    """Bytes of this process's memory that are resident; None where unknown."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class WriteFault(MetatuneError):
    """A write the machine refused (full disk, read-only folder): not the user's mistake, but told the same way."""

    exit_code = 1


def fault_errno(exc: BaseException) -> int | None:
    """The errno of a write fault in `exc` or the exceptions it was raised from, else None.

    safetensors raises its own SafetensorError, whose message ends "(os error 28)"."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FAULTS:
            return exc.errno
        if type(exc).__name__ == "SafetensorError":
            found = re.search(r"\(os error (\d+)\)", str(exc))
            if found and int(found.group(1)) in FAULTS:
                return int(found.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def fault_message(exc: BaseException, path: str | Path | None, what: str = "", then: str = "") -> str | None:
    """One line naming `path` (else the file that failed), what ran out, and what to do; None if
    `exc` is no write fault. `path` is what the user knows: the failing file may be a temporary one."""
    code = fault_errno(exc)
    if code is None:
        return None
    where = path or getattr(exc, "filename", None) or "a file"
    fix = "free some space" if code in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return (
        f"{where}: {FAULTS[code]}"
        + (f" while writing {what}" if what else "")
        + f"; {fix}"
        + (f", then {then}" if then else "")
    )


def torch_write_failed(exc: BaseException, path: str | Path) -> bool:
    """torch.save on a full disk raises a RuntimeError that names no errno ("unexpected pos ...")."""
    text = str(exc)
    if not isinstance(exc, RuntimeError) or ("PytorchStreamWriter" not in text and "inline_container" not in text):
        return False
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free < 2**20


@contextmanager
def writing(path: str | Path, what: str = "", then: str = "", remove: Path | None = None):
    """Turns a write fault into a WriteFault naming `path` (or the file that failed); `then` says
    what to do once it is fixed. `remove`: what the failed write leaves half-written, deleted."""
    try:
        yield
    except WriteFault:
        raise
    except Exception as e:
        message = fault_message(e, path, what, then)
        if message is None and torch_write_failed(e, path):
            message = fault_message(OSError(errno.ENOSPC, "No space left on device"), path, what, then)
        if message is None:
            raise
        if remove is not None and is_main_process():
            shutil.rmtree(remove, ignore_errors=True)
        raise WriteFault(message) from None


@contextmanager
def warning_on_fault(path: str | Path, what: str):
    """For a write that may fail without failing the command: a one-line warning instead."""
    try:
        yield
    except Exception as e:
        message = fault_message(e, path, what)
        if message is None:
            raise
        print(f"warning: {message}", file=sys.stderr)


def training_writes(path: str | Path, what: str, remove: Path | None = None):
    """`writing` for training: once fixed, the run continues with --resume."""
    return writing(path, what, f"continue with: {resume_command()}", remove)


def saving_checkpoints(save, folder):
    """`save` (a function writing a checkpoint into the directory `folder()` names), made to delete
    that directory when it fails: a checkpoint left without its weights would look like one."""

    def saved(*args, **kwargs):
        target = Path(folder())
        try:
            with training_writes(target, "a checkpoint"):
                return save(*args, **kwargs)
        except BaseException:
            if is_main_process():
                shutil.rmtree(target, ignore_errors=True)
            raise

    return saved


def close_progress_bars() -> None:
    """Closes the progress bars a failure left open: the message goes on a line of its own, not after a bar."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(tqdm.tqdm, "_instances", [])) if tqdm else []:
        bar.close()


# --- SIGTERM and SIGINT while training ------------------------------------------------------------

STOP_SECONDS_ENV = "METATUNE_STOP_SECONDS"
STOP_SECONDS = 120  # to finish the step under way and save a checkpoint; then it exits without one


class Stopped(Exception):
    """Training stopped on a signal, with a checkpoint saved: the CLI prints the message and exits."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def resume_command() -> str:
    """The command line that continues this run: the one that started it, with --resume."""
    args = sys.argv[1:] if Path(sys.argv[0]).name in ("metatune", "__main__.py") and sys.argv[1:2] == ["train"] else []
    if not args:
        return "metatune train ... --resume"
    return "metatune " + shlex.join(args + ([] if "--resume" in args else ["--resume"]))


class _Stop:
    signum: int | None = None  # the first signal received while training
    timer: threading.Timer | None = None  # exits if no checkpoint is saved in time


_stop = _Stop()


def stop_signal() -> int | None:
    """The signal (SIGTERM, SIGINT) that asked training to stop, else None; training checks after each optimizer step."""
    return _stop.signum


def _say(text: str) -> None:
    # os.write, not print: the handler may run while the progress bar is writing to stderr
    os.write(2, (text + "\n").encode("utf-8", "replace"))


def _give_up(signum: int, seconds: float) -> None:
    _say(
        f"no checkpoint could be saved within {seconds:g} s of {signal.Signals(signum).name}: stopped; "
        f"continue from the last complete checkpoint with: {resume_command()}"
    )
    os._exit(128 + signum)


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _stop.signum is not None:  # the second one: at once
        _say(f"{name} again: stopped at once; continue from the last complete checkpoint with: {resume_command()}")
        os._exit(128 + signum)
    _stop.signum = signum
    seconds = float(os.environ.get(STOP_SECONDS_ENV) or STOP_SECONDS)
    if is_main_process():
        _say(f"{name}: stopping after this step with a checkpoint (a second {name} stops at once)")
    timer = threading.Timer(seconds, _give_up, (signum, seconds))
    timer.daemon = True
    timer.start()
    _stop.timer = timer


@contextmanager
def stop_on_signals():
    """While training: SIGTERM and SIGINT ask for a checkpoint at the next step end, then a stop
    (raise `Stopped` when stop_signal() says so); a second one, or no checkpoint within
    METATUNE_STOP_SECONDS, exits at once."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _stop.timer is not None:
            _stop.timer.cancel()
        _stop.signum, _stop.timer = None, None


def stopped(step: int) -> Stopped:
    """The exception that ends training once the checkpoint of `step` is saved."""
    signum = _stop.signum or signal.SIGTERM  # another process of the launch may have received it
    return Stopped(
        f"stopped by {signal.Signals(signum).name} after step {step}, saved as checkpoint-{step}; "
        f"continue with: {resume_command()}",
        signum,
    )


# --- warnings that are expected on a CPU -----------------------------------------------------------


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# bitsandbytes looks for an optional faster 4-bit kernel (the `kernels` package) on CPUs with AVX512-BF16
_OPTIONAL_KERNEL = _DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community")


def quiet_expected_warnings() -> None:
    """Drops the warnings every CPU run would print and that call for nothing (idempotent)."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if _OPTIONAL_KERNEL not in logger.filters:
        logger.addFilter(_OPTIONAL_KERNEL)


def tied_names(model) -> set[str]:
    """Names of the parameters that are another one under a second name (lm_head.weight tied to the embeddings)."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


class _TiedWeights(logging.Filter):
    """Drops the reports of tied weights left out of a checkpoint (safetensors keeps one copy of a
    shared tensor); a report naming any other weight still shows."""

    # logger -> the report, with the names as a Python list or set literal
    REPORTS = {
        "transformers.trainer": re.compile(r"There were missing keys in the checkpoint model loaded: (\[.*\])"),
        "accelerate.utils.other": re.compile(r"Removed shared tensor (\{.*\}) while saving"),
    }

    def __init__(self, tied: set[str]):
        super().__init__()
        self.tied = tied

    def filter(self, record: logging.LogRecord) -> bool:
        found = self.REPORTS[record.name].search(record.getMessage())
        if found is None:
            return True
        try:
            names = ast.literal_eval(found.group(1))
        except (ValueError, SyntaxError):
            return True
        return not (names and {n.removeprefix("module.") for n in names} <= self.tied)


@contextmanager
def quiet_tied_weights(model):
    """While training `model`: no warnings about its tied weights missing from checkpoints."""
    quiet = _TiedWeights(tied_names(model))
    for name in quiet.REPORTS:
        logging.getLogger(name).addFilter(quiet)
    try:
        yield
    finally:
        for name in quiet.REPORTS:
            logging.getLogger(name).removeFilter(quiet)
