"""`python -m sslx.probe`: train per-layer linear probes and score their explanations (see --help)."""
from sslx.allocator import keep_freed_memory
from sslx.probe.cli import main

if __name__ == "__main__":
    keep_freed_memory()  # a program, not a library call: freed memory stays for reuse (see sslx.allocator)
    main()
