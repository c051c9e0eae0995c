"""Reliability: bad inputs through the library, the CLI and the app; a batch run killed and resumed; a full disk;
bit-identical outputs from the same seed.

Also a script that prints the counts (about 3 minutes on one thread)::

    .venv/bin/python tests/test_reliability.py
    bad inputs tried: 105, clear errors: 90, converted and accepted: 15, tracebacks: 0; kills: 20, lost: 0, ...

An outcome is a *clear error* when the library raises a ``PhospheneError`` (the CLI: exit status 2 and one line
starting 'phosphene: error:'), *converted* when an odd but legitimate input (CMYK, 16-bit, palette, alpha) is
read as RGB, and a *traceback* otherwise: any other exception, or a CLI exit with an internal error.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import synth  # noqa: E402
from synth import batch  # noqa: E402
from synth.cli import main  # noqa: E402
from synth.errors import PhospheneError  # noqa: E402
from synth.files import read_png, sha256  # noqa: E402


# ------------------------------------------------------------------------------------------------ bad image files
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png() -> bytes:
    """A 20,000 × 20,000 PNG header with almost no data: what a decompression bomb looks like before decoding."""
    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _encoded(mode: str, fmt: str, size: int = 40) -> bytes:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16))
    elif mode == "P":
        im = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        im = rgb.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def bad_images() -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, expected outcome: 'error' or 'converted')."""
    png, jpeg = _encoded("RGB", "PNG"), _encoded("RGB", "JPEG")
    return {
        "truncated.png": (png[: len(png) // 2], "error"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "error"),
        "corrupt.png": (png[:16] + bytes(range(256)) * 4, "error"),
        "corrupt.jpg": (jpeg[:4] + b"\xff" * 512, "error"),
        "one_pixel.png": (_encoded("RGB", "PNG", size=1), "error"),
        "bomb.png": (_bomb_png(), "error"),
        "not_an_image.png": (b"name,category\nimg_0.png,faces\n", "error"),
        "empty.png": (b"", "error"),
        "cmyk.jpg": (_encoded("CMYK", "JPEG"), "converted"),
        "sixteen_bit.png": (_encoded("I;16", "PNG"), "converted"),
        "palette.png": (_encoded("P", "PNG"), "converted"),
        "alpha.png": (_encoded("RGBA", "PNG"), "converted"),
        "grey.png": (_encoded("L", "PNG"), "converted"),
    }


# ------------------------------------------------------------------------------------------------ outcomes
@dataclass
class Case:
    """One bad input tried one way: ``run(folder)`` returns 'error', 'converted' or 'traceback: ...'."""

    name: str
    expect: str
    run: Callable[[Path], str]


def library(fn: Callable[[Path], object]) -> Callable[[Path], str]:
    """Outcome of a library call: a PhospheneError is a clear error; returning is 'converted'."""
    def outcome(folder: Path) -> str:
        try:
            fn(folder)
        except PhospheneError as e:
            return "error" if str(e).strip() else f"traceback: an empty message {e!r}"
        except Exception as e:  # noqa: BLE001 - that is what is being counted
            return f"traceback: {type(e).__name__}: {e}"
        return "converted"
    return outcome


def cli(*argv: str) -> Callable[[Path], str]:
    """Outcome of ``phosphene ARGV`` (in this process; '{d}' in an argument is the case's folder)."""
    def outcome(folder: Path) -> str:
        args = [a.replace("{d}", str(folder)) for a in argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(args)
            except SystemExit as e:  # argparse: usage line and status 2
                rc = e.code
        text = err.getvalue()
        if "Traceback" in text or rc == 1:
            return f"traceback: {text.strip()[-300:]}"
        if rc == 0:
            return "converted"
        lines = [ln for ln in text.strip().splitlines() if ln.startswith("phosphene")]
        return "error" if rc == 2 and len(lines) == 1 else f"traceback: exit {rc}: {text.strip()[-300:]}"
    return outcome


class _Upload:
    def __init__(self, name: str, data: bytes):
        self.name, self._data = name, data

    def getvalue(self) -> bytes:
        return self._data


def _write(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


@functools.cache
def _model() -> synth.ProbeModel:
    return synth.load_model("toy-standard", device="cpu")


class _Evil:
    """An object whose unpickling would create a file: what 'a checkpoint containing pickled code' does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoints(folder: Path) -> dict[str, str]:
    paths = {"wrong_arch": folder / "resnet.pt", "pickled": folder / "evil.pt", "text": folder / "notes.pt"}
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, paths["wrong_arch"])
    torch.save({"state_dict": _Evil(str(folder / "PWNED"))}, paths["pickled"])
    paths["text"].write_text("not a checkpoint")
    return {k: str(v) for k, v in paths.items()}


def _responses(folder: Path, values: np.ndarray, name: str) -> str:
    path = folder / name
    ids = np.array([f"train:{i}" for i in range(values.shape[0])])
    np.savez(path, responses=values, image_ids=ids)
    return str(path)


def cases() -> list[Case]:
    """Every bad input, each through the library, the CLI and the app where it applies."""
    out: list[Case] = []
    for name, (data, expect) in bad_images().items():
        out.append(Case(f"library:read_png:{name}", expect,
                        library(lambda d, n=name, b=data: read_png(_write(d, n, b)))))
        out.append(Case(f"cli:attack:{name}", expect, lambda d, n=name, b=data: cli(
            "attack", _write(d, n, b), "--model", "toy-standard", "--steps", "1", "--eps", "1/255",
            "--out", "{d}/attack")(d)))
        if expect == "error":  # (a metamer of a good image takes seconds: the attack shows those are read)
            out.append(Case(f"cli:metamer:{name}", expect, lambda d, n=name, b=data: cli(
                "metamer", _write(d, n, b), "--model", "toy-standard", "--steps", "1", "--out", "{d}/metamer")(d)))
        from explorer.common import read_upload
        out.append(Case(f"app:upload:{name}", expect, library(lambda d, n=name, b=data: read_upload(_Upload(n, b)))))

    m = _model
    x = lambda *shape, **kw: torch.rand(*shape, **kw)  # noqa: E731
    import attacks
    import metamers
    from synth.engine.objectives import Match, parse
    from synth.neuro.readouts import Responses
    tensors = {
        "activations: one channel": lambda d: m().activations(x(2, 1, 64, 64), ["IT"]),
        "activations: 3-d batch": lambda d: m().activations(x(3, 64, 64), ["IT"]),
        "activations: uint8": lambda d: m().activations(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["IT"]),
        "activations: 0..255 floats": lambda d: m().activations(x(1, 3, 64, 64) * 255, ["IT"]),
        "activations: NaN pixels": lambda d: m().activations(torch.full((1, 3, 64, 64), float("nan")), ["IT"]),
        "activations: empty batch": lambda d: m().activations(x(0, 3, 64, 64), ["IT"]),
        "activations: a list": lambda d: m().activations([[0.5]], ["IT"]),
        "synthesize: start of 1 channel": lambda d: synth.synthesize(m(), "IT:1", init=x(1, 1, 64, 64), steps=1,
                                                                      progress=False),
        "synthesize: 3 starts for 2 images": lambda d: synth.synthesize(m(), "IT:1", n=2, init=x(3, 3, 64, 64),
                                                                         steps=1, progress=False),
        "pgd: uint8 images": lambda d: attacks.pgd(m(), torch.zeros(2, 3, 64, 64, dtype=torch.uint8),
                                                    torch.tensor([0, 1]), eps=4 / 255, steps=1),
        "pgd: 3 labels for 2 images": lambda d: attacks.pgd(m(), x(2, 3, 64, 64), torch.tensor([0, 1, 2]),
                                                             eps=4 / 255, steps=1),
        "pgd: negative eps": lambda d: attacks.pgd(m(), x(1, 3, 64, 64), torch.tensor([0]), eps=-1.0, steps=1),
        "pgd: NaN eps": lambda d: attacks.pgd(m(), x(1, 3, 64, 64), torch.tensor([0]), eps=float("nan"), steps=1),
        "metamer: 3-d reference": lambda d: metamers.generate(m(), x(3, 64, 64), stage="IT", steps=1),
        "match: NaN target": lambda d: synth.synthesize(m(), Match("IT", target=torch.full((256, 4, 4), float("nan"))),
                                                        steps=1, progress=False),
        "match: inf target": lambda d: synth.synthesize(m(), Match("IT", target=torch.full((256, 4, 4), float("inf"))),
                                                        steps=1, progress=False),
        "match: target of the wrong shape": lambda d: synth.synthesize(m(), Match("IT", target=torch.zeros(7)),
                                                                       steps=1, progress=False),
        "responses: NaN": lambda d: Responses([f"train:{i}" for i in range(12)], np.full((12, 3), np.nan),
                                              ["a", "b", "c"]),
        "responses: inf": lambda d: Responses([f"train:{i}" for i in range(12)], np.full((12, 3), np.inf),
                                              ["a", "b", "c"]),
        "responses: ids do not match": lambda d: Responses(["train:0"], np.zeros((12, 3)), ["a", "b", "c"]),
        "unknown model": lambda d: synth.load_model("toy-standrd"),
        "unknown layer": lambda d: m().activations(x(1, 3, 64, 64), ["IT5"]),
        "unknown site": lambda d: synth.synthesize(m(), "IT:readout:site3", steps=1, progress=False),
        "channel out of range": lambda d: synth.synthesize(m(), "IT:9999", steps=1, progress=False),
        "objective: product of objectives": lambda d: parse("IT:1 * IT:2"),
        "objective: tau=abc": lambda d: synth.synthesize(m(), "onehot(IT:3, tau=abc)", steps=1, progress=False),
        "objective: divide by zero": lambda d: parse("IT:1 / 0"),
        "objective: unknown function": lambda d: parse("strech(IT:1)"),
        "objective: unbalanced": lambda d: parse("stretch(IT:1"),
        "checkpoint: wrong architecture":
            lambda d: synth.load_model("toy-standard", weights=_checkpoints(d)["wrong_arch"]),
        "checkpoint: pickled code": lambda d: synth.load_model("toy-standard", weights=_checkpoints(d)["pickled"]),
        "checkpoint: not a checkpoint": lambda d: synth.load_model("toy-standard", weights=_checkpoints(d)["text"]),
        "checkpoint: missing file": lambda d: synth.load_model("toy-standard", weights=str(d / "nope.pt")),
        "config: typo in a batch file":
            lambda d: batch.load_experiment(_write(d, "t.toml", b"[defaults]\nstpes = 3\n")),
        "config: batch file is not TOML": lambda d: batch.load_experiment(_write(d, "t.toml", b"[[jobs]\n")),
    }
    out += [Case(f"library:{k}", "error", library(fn)) for k, fn in tensors.items()]

    commands = {
        "objective: product": ("synth", "--objective", "IT:1 * IT:2", "--steps", "1", "--out", "{d}/s"),
        "objective: tau=abc": ("synth", "--objective", "onehot(IT:3, tau=abc)", "--steps", "1", "--out", "{d}/s"),
        "objective: unknown layer": ("synth", "--objective", "IT5:1", "--steps", "1", "--out", "{d}/s"),
        "objective: unknown site": ("synth", "--objective", "IT:readout:site3", "--steps", "1", "--out", "{d}/s"),
        "unknown model": ("synth", "--model", "toy-standrd", "--objective", "IT:1", "--out", "{d}/s"),
        "untrained resnet50": ("synth", "--model", "resnet50", "--objective", "layer4:1", "--out", "{d}/s"),
        "unknown readout": ("synth", "--readout", "{d}/nope", "--objective", "IT:1", "--out", "{d}/s"),
        "flag typo": ("synth", "--objective", "IT:1", "--stpes", "3", "--out", "{d}/s"),
        "bad --eps": ("attack", "{d}/x.png", "--eps", "four", "--out", "{d}/a"),
        "missing image": ("attack", "{d}/does_not_exist.png", "--out", "{d}/a"),
        "unknown attack": ("attack", "{d}/x.png", "--attack", "pgd-lnf", "--out", "{d}/a"),
        "unknown target class": ("attack", "{d}/x.png", "--target", "dogs", "--out", "{d}/a"),
        "unknown stage": ("metamer", "{d}/x.png", "--stage", "V7", "--out", "{d}/m"),
        "batch typo": ("batch", "{d}/typo.toml", "--out", "{d}/b"),
        "batch missing file": ("batch", "{d}/none.toml", "--out", "{d}/b"),
        "batch unknown backend": ("batch", "{d}/typo.toml", "--backend", "slurm", "--out", "{d}/b"),
        "responses: NaN": ("readout", "fit", "{d}/nan.npz", "--model", "toy-standard", "--layer", "V4"),
        "responses: not npz": ("readout", "fit", "{d}/typo.toml", "--model", "toy-standard", "--layer", "V4"),
        "responses: missing arrays": ("readout", "fit", "{d}/empty.npz", "--model", "toy-standard", "--layer", "V4"),
        "weights of the wrong architecture": ("synth", "--weights", "{d}/resnet.pt", "--objective", "IT:1",
                                              "--out", "{d}/s"),
        "weights with pickled code": ("synth", "--weights", "{d}/evil.pt", "--objective", "IT:1", "--out", "{d}/s"),
        "robustness: unknown corruption": ("robustness", "--models", "toy-standard", "--corruptions", "fogg",
                                           "--out", "{d}/r"),
        "microstim: layer without a sheet": ("microstim", "afraz", "--model", "toy-standard", "--out", "{d}/f"),
    }

    def prepared(argv: tuple[str, ...]) -> Callable[[Path], str]:
        def run(d: Path) -> str:
            _write(d, "x.png", _encoded("RGB", "PNG", size=64))
            _write(d, "typo.toml", b"[defaults]\nstpes = 3\n[[jobs]]\nobjective = 'IT:1'\n")
            _responses(d, np.full((12, 3), np.nan), "nan.npz")
            np.savez(d / "empty.npz", other=np.zeros(3))
            _checkpoints(d)
            return cli(*argv)(d)
        return run
    out += [Case(f"cli:{k}", "error", prepared(argv)) for k, argv in commands.items()]
    return out


def try_all(folder: Path) -> dict:
    """Run every case in a fresh sub-folder; the counts and what went wrong."""
    counts = {"tried": 0, "error": 0, "converted": 0, "traceback": 0, "unexpected": []}
    for k, case in enumerate(cases()):
        d = folder / f"case{k:03d}"
        d.mkdir(parents=True)
        got = case.run(d)
        counts["tried"] += 1
        counts["traceback" if got.startswith("traceback") else got] += 1
        if got != case.expect:
            counts["unexpected"].append((case.name, case.expect, got))
        if (d / "PWNED").exists():
            counts["unexpected"].append((case.name, "no code run", "the pickled code ran"))
    return counts


# ------------------------------------------------------------------------------------------------ faults
KILL_EXPERIMENT = """
[defaults]
model = "toy-standard"
steps = 128
size = 64
transforms = "none"
relu_override = 0

[[grid]]
objective = [{objectives}]
seed = [0, 1]
"""


def kill_experiment(folder: Path, units: int = 60) -> Path:
    """120 jobs of about half a second each: enough that 20 kills all land mid-run."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kill.toml"
    path.write_text(KILL_EXPERIMENT.format(objectives=", ".join(f'"stretch(IT:{u})"' for u in range(units))))
    return path


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Each finished job's record and images, by (inode, mtime): a recomputed job would write new ones."""
    stamps = {}
    for record in (out / "jobs").glob("*.json"):
        stamps[record.name] = (record.stat().st_ino, record.stat().st_mtime_ns)
        for row in json.loads(record.read_text())["rows"]:
            p = out / row["file"]
            stamps[row["file"]] = (p.stat().st_ino, p.stat().st_mtime_ns)
    return stamps


def _finished_jobs(out: Path) -> int:
    """How many jobs the batch has recorded as finished (its own files: one record per job)."""
    return len(list((out / "jobs").glob("*.json"))) if (out / "jobs").is_dir() else 0


def _reached(out: Path, jobs: int) -> Callable[[], bool]:
    """An event: the batch has recorded ``jobs`` finished jobs."""
    return lambda: _finished_jobs(out) >= jobs


def _writing(out: Path) -> bool:
    """Whether the batch is in the middle of a write: a temporary file of ``synth.files.atomic`` is on disk."""
    return any(p.name.endswith(".tmp") for d in (out, out / "jobs") if d.is_dir() for p in os.scandir(d))


def _wait(proc: subprocess.Popen, event: Callable[[], bool], ceiling: float = 600.0, poll: float = 0.002) -> bool:
    """Wait for ``event`` (polled), as long as the process runs and at most ``ceiling`` seconds: a generous bound
    that only a hung run reaches, never the schedule.  Whether the event came while the process ran."""
    end = time.monotonic() + ceiling
    while proc.poll() is None and time.monotonic() < end:
        if event():
            return True
        time.sleep(poll)
    return False


def kill_and_resume(folder: Path, kills: int = 20, seed: int = 0, in_writes: int = 6) -> dict:
    """Start ``phosphene batch`` and SIGKILL it, ``kills`` times, then let it finish; check that every job's image is
    there exactly once and intact, and that no finished job was computed again.

    The kills follow the batch's progress, seen through its own files, never the clock, so each tests what it means
    to on a fast machine or a loaded one: most land at a random point inside a job, after 1-3 more jobs have
    finished in that run (the time into the job drawn from the last job's length); ``in_writes`` of them land the
    moment a temporary file appears, in the middle of writing an image or a record."""
    exp, out = kill_experiment(folder), folder / "out"
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "synth.cli", "batch", str(exp), "--out", str(out)]
    first_seen: dict[str, tuple[int, int]] = {}
    done_kills, during_writes, attempts = 0, 0, 0
    modes = ["write"] * in_writes + ["job"] * (kills - in_writes)
    rng.shuffle(modes)
    while done_kills < kills and attempts < 3 * kills:
        attempts += 1
        mode = modes[done_kills]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = _finished_jobs(out)
        writing = False
        if mode == "write":
            _wait(proc, _reached(out, start + 1))  # past start-up, where nothing is written
            writing = _wait(proc, lambda: _writing(out), poll=0.0002)
        else:
            goal = start + rng.randint(1, 3)
            _wait(proc, _reached(out, goal - 1))
            t = time.monotonic()
            if _wait(proc, _reached(out, goal)):
                _wait(proc, lambda: False, ceiling=rng.uniform(0.05, 0.95) * (time.monotonic() - t))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            done_kills += 1
            during_writes += writing
        proc.wait()
        proc.stderr.close()
        for key, stamp in _stamps(out).items():
            first_seen.setdefault(key, stamp)
        if proc.returncode == 0:
            break  # everything finished before a kill landed
    final = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    _, jobs = batch.load_experiment(exp)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_job: dict[str, list[dict]] = {}
    for r in rows:
        by_job.setdefault(r["job"], []).append(r)
    pngs = [p.name for p in out.glob("*.png")]
    lost = sum(1 for j in jobs if len(by_job.get(j["id"], [])) != 1 or not (out / by_job[j["id"]][0]["file"]).is_file())
    duplicated = sum(1 for j in jobs if sum(1 for p in pngs if f"_{j['id']}_" in p) > 1) + len(pngs) - len(rows)
    corrupt = sum(1 for r in rows if (out / r["file"]).is_file() and sha256(out / r["file"]) != r["sha256"])
    now = _stamps(out)
    recomputed = sum(1 for k, v in first_seen.items() if now.get(k) != v)
    leftovers = len(list(out.rglob("*.tmp")))
    return {"kills": done_kills, "kills_during_writes": during_writes, "jobs": len(jobs), "lost": lost,
            "duplicated": duplicated, "corrupt": corrupt,
            "recomputed": recomputed, "leftover_tmp": leftovers, "final_exit": final.returncode,
            "final_stderr_traceback": "Traceback" in final.stderr, "finished_before_last_run": len(first_seen)}


def full_disk(folder: Path) -> dict:
    """A batch whose third image write fails with ENOSPC: the run stops with one clear line and leaves no
    partial file; the next run completes."""
    exp, out = kill_experiment(folder, units=3), folder / "out"
    real, writes = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        writes.append(fp)
        if len(writes) == 3:
            Path(fp).write_bytes(b"\x89PNG half")  # some bytes reach the disk, then it is full
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real(self, fp, *args, **kwargs)

    err = io.StringIO()
    Image.Image.save = save
    try:
        with contextlib.redirect_stderr(err):
            rc = main(["batch", str(exp), "--out", str(out)])
    finally:
        Image.Image.save = real
    partial = [p.name for p in out.rglob("*") if p.suffix == ".tmp" or (p.suffix == ".png" and not _listed(out, p))]
    resumed = batch.run(exp, out, progress=False)
    message = [ln for ln in err.getvalue().splitlines() if ln.startswith("phosphene")]  # (the rest is tqdm's bar)
    return {"exit": rc, "message": message, "partial": partial, "resumed": resumed}


def _listed(out: Path, png: Path) -> bool:
    """Whether a PNG belongs to a finished job (its record lists it with this hash)."""
    for record in (out / "jobs").glob("*.json"):
        for row in json.loads(record.read_text())["rows"]:
            if row["file"] == png.name:
                return sha256(png) == row["sha256"]
    return False


# ------------------------------------------------------------------------------------------------ tests
CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_clear_error_or_is_converted(case, tmp_path):
    got = case.run(tmp_path)
    assert got == case.expect, got
    assert not (tmp_path / "PWNED").exists(), "unpickling a checkpoint ran its code"


def test_a_cli_user_sees_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "truncated.png"
    bad.write_bytes(bad_images()["truncated.png"][0])
    for argv in (["synth", "--objective", "IT:1 * IT:2", "--out", str(tmp_path / "s")],
                 ["attack", str(bad), "--out", str(tmp_path / "a")]):
        proc = subprocess.run([sys.executable, "-m", "synth.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("phosphene: error:")


def test_an_unexpected_failure_is_one_line_naming_a_bug_and_exits_1(monkeypatch, capsys):
    import synth.cli as cli_module
    monkeypatch.setattr(cli_module, "_images", lambda args: {}["no such key"])  # a bug, as the CLI would meet it
    assert main(["images", "--out", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("phosphene: internal error: KeyError") and "PHOSPHENE_DEBUG=1" in err and "\n" not in err


def test_a_full_disk_leaves_no_partial_file_and_the_next_run_completes(tmp_path):
    r = full_disk(tmp_path)
    assert r["exit"] == 2 and len(r["message"]) == 1 and "No space left on device" in r["message"][0]
    assert r["partial"] == []
    assert r["resumed"]["ran"] == r["resumed"]["jobs"] - 2 and r["resumed"]["images"] == r["resumed"]["jobs"]


@pytest.mark.slow
def test_twenty_kills_lose_nothing_duplicate_nothing_and_recompute_nothing(tmp_path):
    r = kill_and_resume(tmp_path, kills=20)
    assert r["kills"] == 20 and r["kills_during_writes"] >= 1, r
    assert r["final_exit"] == 0 and not r["final_stderr_traceback"]
    assert r["lost"] == r["duplicated"] == r["corrupt"] == r["recomputed"] == r["leftover_tmp"] == 0, r
    assert 0 < r["finished_before_last_run"], r


@pytest.mark.slow
def test_same_seed_and_config_give_bit_identical_pngs_and_the_manifest_names_the_machine(tmp_path):
    exp = kill_experiment(tmp_path, units=2)
    a, b = batch.run(exp, tmp_path / "a", progress=False), batch.run(exp, tmp_path / "b", progress=False)
    assert a["images"] == b["images"] == 4
    rows = [json.loads(line) for line in (tmp_path / "a/manifest.jsonl").read_text().splitlines()]
    for r in rows:
        assert sha256(tmp_path / "a" / r["file"]) == sha256(tmp_path / "b" / r["file"]) == r["sha256"]
        assert {"host", "platform", "python", "torch", "torchvision", "numpy"} <= set(r["machine"])
        assert r["machine"]["torch"] == torch.__version__
    other = tmp_path / "c.toml"  # and a different seed is a different image
    other.write_text(exp.read_text().replace("seed = [0, 1]", "seed = [2]"))
    batch.run(other, tmp_path / "c", progress=False)
    c = [json.loads(line) for line in (tmp_path / "c/manifest.jsonl").read_text().splitlines()]
    assert not {r["sha256"] for r in c} & {r["sha256"] for r in rows}


# ------------------------------------------------------------------------------------------------ the script
def report() -> int:
    """Print the counts; exit status 1 if anything went wrong."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        c = try_all(tmp / "inputs")
        k = kill_and_resume(tmp / "kills")
        disk = full_disk(tmp / "disk")
        print(f"bad inputs tried: {c['tried']}, clear errors: {c['error']}, converted and accepted: "
              f"{c['converted']}, tracebacks: {c['traceback']}; kills: {k['kills']}, lost: {k['lost']}, "
              f"duplicated: {k['duplicated']}, corrupt: {k['corrupt']}, recomputed: {k['recomputed']}; "
              f"disk full: exit {disk['exit']}, partial files: {len(disk['partial'])} "
              f"({time.perf_counter() - t:.0f} s)")
        for name, expect, got in c["unexpected"]:
            print(f"  unexpected: {name}: expected {expect}, got {got}")
        bad = c["unexpected"] or c["traceback"] or k["kills"] < 20 or any(
            k[key] for key in ("lost", "duplicated", "corrupt", "recomputed", "leftover_tmp"))
        return 1 if bad or disk["partial"] or disk["exit"] != 2 else 0


if __name__ == "__main__":
    sys.exit(report())
