"""`python -m forwarder` is the `forwarder` command."""

from forwarder.cli import main

raise SystemExit(main())
