"""``python -m memlab ...``: the same as the ``memlab`` command."""

from memlab.cli import main

# The guard matters: a spawned worker imports the parent's main module as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
