"""fastad against NumPy, JAX and PyTorch (those installed) on the seed workloads, in one run.

    python benches/compare.py            # needs fastad installed (make install)
"""
from fastad._bench import run

if __name__ == "__main__":
    run(peers=True)
