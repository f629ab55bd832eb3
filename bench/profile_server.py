"""The web server under cProfile, for the window `load.py fanout --profile` marks.

  python bench/profile_server.py run /tmp/web.prof --port 8000   # as the Procfile's web
  python bench/load.py fanout --url http://127.0.0.1:8000 --rate 150 --duration 25 \\
      --server-pid <PID> --profile
  python bench/profile_server.py report /tmp/web.prof --messages <sent>

`run` serves as `python -m voiceflow.runtime.server` (the other arguments are its):
SIGUSR1 starts profiling, SIGUSR2 stops it and writes the file. `report` prints
function calls per message, by module, and the functions called most often. Counts
are exact; cProfile's times are wall-clock and inflated by its own overhead, so the
CPU a change saves is measured with `load.py fanout --server-pid` on a plain server.
"""

import argparse
import collections
import cProfile
import os
import pstats
import runpy
import signal
import sys


def run(path: str, server_args: list[str]) -> None:
    profile = cProfile.Profile()

    def stop(*_):
        profile.disable()
        profile.dump_stats(path)

    signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
    signal.signal(signal.SIGUSR2, stop)
    sys.path.insert(0, os.getcwd())
    sys.argv = ["voiceflow.runtime.server", *server_args]
    runpy.run_module("voiceflow.runtime.server", run_name="__main__", alter_sys=True)


# The project's own packages: their modules are named from here down, in any checkout.
_PROJECT = ("chat", "presence", "voiceflow")


def _module(filename: str) -> str:
    if filename == "~":
        return "(built-in)"
    parts = filename.split("/")
    for index, part in enumerate(parts):
        if part in _PROJECT:
            return "/".join(parts[index:])
    for marker in ("site-packages/", "python3.11/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return "/".join(filename.split("/")[:2])


def report(path: str, messages: int, top: int) -> None:
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    by_module: collections.Counter = collections.Counter()
    total = python = 0
    for (filename, _, _), (_, calls, _, _, _) in stats.items():
        by_module[_module(filename)] += calls
        total += calls
        python += 0 if filename == "~" else calls
    print(f"calls per message: {total / messages:.0f} ({python / messages:.0f} Python)")
    for module, calls in by_module.most_common(top):
        print(f"{calls / messages:8.1f}  {module}")
    print("most called:")
    ranked = sorted(stats.items(), key=lambda item: -item[1][1])
    for (filename, line, name), (_, calls, _, _, _) in ranked[:top]:
        where = f"{_module(filename)}:{line}" if filename != "~" else ""
        print(f"{calls / messages:8.1f}  {name} {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run").add_argument("path")
    r = sub.add_parser("report")
    r.add_argument("path")
    r.add_argument("--messages", type=int, required=True)
    r.add_argument("--top", type=int, default=25)
    args, rest = parser.parse_known_args()
    if args.command == "run":
        run(args.path, rest)
    else:
        report(args.path, args.messages, args.top)


if __name__ == "__main__":
    main()
