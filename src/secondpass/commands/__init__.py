"""Sub-commands of the ``secondpass`` CLI; each module defines ``register(subparsers)``."""
