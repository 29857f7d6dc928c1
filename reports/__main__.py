"""``python -m reports {continual,nas} ...``: figures and tables from result files only (nothing is trained here)."""
import sys

USAGE = """usage: python -m reports {continual,nas} [options]

  continual   Figures 6 and 7 and the final-accuracy table from continual results CSVs
  nas         Table 5 and Figure F8 from NAS search and ground-truth results

'python -m reports continual --help' and 'python -m reports nas --help' list the options."""


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not argv:
        print("error: name a report: python -m reports continual ... or python -m reports nas ...", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "continual":
        from .continual import main as run
    elif command == "nas":
        from .nas import main as run
    else:
        print(f"error: unknown report {command!r}: use continual or nas", file=sys.stderr)
        return 2
    return run(rest) or 0


sys.exit(main(sys.argv[1:]))
