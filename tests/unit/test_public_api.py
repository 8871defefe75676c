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


def test_every_error_a_user_can_catch_is_exported() -> None:
    # A library user catches our errors by importing them from the package root.
    import inspect

    import secondpass
    from secondpass import errors

    raised = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.SecondPassError)
    }
    assert raised <= set(secondpass.__all__), sorted(raised - set(secondpass.__all__))
