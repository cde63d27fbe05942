"""`python -m mini_docker` is the `mini-docker` command."""

from mini_docker.cli import main

raise SystemExit(main())
