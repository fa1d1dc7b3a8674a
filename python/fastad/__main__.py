"""``python -m fastad``: the seed workloads, timed, as a table (see fastad._bench)."""
import argparse

from ._bench import run

parser = argparse.ArgumentParser(prog="python -m fastad", description=__doc__)
parser.add_argument("--no-peers", action="store_true", help="skip JAX and PyTorch even if installed")
parser.add_argument("--quick", action="store_true",
                    help="the Fisher row on 10,000 samples instead of 100,000 (for tests)")
args = parser.parse_args()
run(peers=not args.no_peers, fisher_n=10_000 if args.quick else None)
