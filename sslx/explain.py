"""`python -m sslx.explain IMAGE ...` runs the command line (sslx.cli_explain); importing gives the explain() function."""
from __future__ import annotations

import sys

if __name__ == "__main__":
    from sslx.allocator import keep_freed_memory
    from sslx.cli_explain import main

    keep_freed_memory()  # a program, not a library call: freed memory stays for reuse (see sslx.allocator)
    sys.exit(main())
else:
    from sslx.explain_api import explain

    # Importing a submodule binds it as an attribute of its package, so `import sslx.explain` would shadow the
    # function `sslx.explain` with this module. Registering the function as the module's value makes every
    # route (`from sslx import explain`, `import sslx.explain`, importlib) yield the same function.
    sys.modules[__name__] = explain
