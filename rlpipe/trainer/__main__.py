"""``python -m rlpipe.trainer --root DIR``: same as the ``rlpipe-train`` console script."""

from rlpipe.trainer.entrypoint import main

if __name__ == "__main__":
    raise SystemExit(main())
