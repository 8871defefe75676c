from __future__ import annotations

import sys

from secondpass.cli import main

sys.exit(main())
