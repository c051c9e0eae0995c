"""`make test` on a busy machine: the README's test command beside a CPU load, on a fresh clone, with its time.

A shared workstation or CI runner rarely runs one job at a time.  This starts ``--load`` processes that each keep
one core busy (what ``stress-ng --cpu N`` does), clones the repository's committed HEAD into a temporary folder
(``--here`` runs in this checkout instead), runs ``make test`` there, and prints the exit status, the wall time and
each pytest summary line, then stops the load whatever happened::

    python3 benchmarks/make_test_under_load.py             # a load on every core, on a fresh clone
    python3 benchmarks/make_test_under_load.py --load 0    # the same run on a quiet machine, for comparison

The tests wait for events (a batch's files, a server's health check, a page element) with generous ceilings, never
for a fixed time, so a loaded machine should make them slower, not red.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"=+ (.*(passed|failed|error).* in [0-9.]+s.*) =+")


def start_load(n: int) -> list[subprocess.Popen]:
    """``n`` processes that each spin one core until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> int:
    """Run ``make test`` beside the load and print what it took; the exit status is make's."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes beside the tests")
    ap.add_argument("--here", action="store_true", help="run in this checkout instead of a fresh clone")
    ap.add_argument("--log", default="make-test-under-load.log", help="where make's output goes")
    args = ap.parse_args()
    work = ROOT if args.here else Path(tempfile.mkdtemp(prefix="phosphene-clone-")) / "phosphene"
    if not args.here:
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(work)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work, capture_output=True,
                            text=True).stdout.strip()
    log = Path(args.log).resolve()
    print(f"make test at {commit} in {work}, beside {args.load} busy process(es) on {os.cpu_count()} cores; "
          f"output in {log}", flush=True)
    load = start_load(args.load)
    t0 = time.perf_counter()
    try:
        with open(log, "w") as out:
            rc = subprocess.run(["make", "test"], cwd=work, stdout=out, stderr=subprocess.STDOUT).returncode
    finally:
        for p in load:
            p.kill()
            p.wait()
    minutes = (time.perf_counter() - t0) / 60
    for line in log.read_text(errors="replace").splitlines():
        m = SUMMARY.search(line)
        if m:
            print(f"  pytest: {m[1]}")
    print(f"make test {'passed' if rc == 0 else f'FAILED (exit {rc})'} in {minutes:.1f} min beside a "
          f"{args.load}-process CPU load", flush=True)
    if not args.here and rc == 0:
        shutil.rmtree(work.parent, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
