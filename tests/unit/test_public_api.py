from __future__ import annotations

import subprocess
import sys


def test_public_names_import_without_heavy_dependencies() -> None:
    # `import secondpass` must stay instant: no torch, engine client or redis until used.
    code = (
        "import sys, secondpass\n"
        "assert all(hasattr(secondpass, n) for n in secondpass.__all__)\n"
        "heavy = [m for m in ('torch', 'elasticsearch', 'opensearchpy', 'redis', "
        "'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
