"""``python -m fastad``: the seed workloads, timed, as a table (see fastad._bench)."""
import argparse

from ._bench import run

parser = argparse.ArgumentParser(prog="python -m fastad", description=__doc__)
parser.add_argument("--no-peers", action="store_true", help="skip JAX and PyTorch even if installed")
args = parser.parse_args()
run(peers=not args.no_peers)
