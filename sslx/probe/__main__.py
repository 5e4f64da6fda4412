"""`python -m sslx.probe`: train per-layer linear probes and score their explanations (see --help)."""
from sslx.probe.cli import main

if __name__ == "__main__":
    main()
