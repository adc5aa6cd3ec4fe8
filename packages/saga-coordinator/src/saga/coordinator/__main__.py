"""``python -m saga.coordinator``: serve one coordinator (see :mod:`saga.coordinator.serve`)."""

from saga.coordinator.serve import main

raise SystemExit(main())
